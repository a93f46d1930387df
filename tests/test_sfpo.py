"""SFPO on one process: `sfpo_update` against a hand-written SFPO loop, and `EntropySwitch` on crafted sequences.

The reference (`_reference_sfpo`) is the seed's loop written out with a second, identical model and optimizer:
clone the slow weights, K plain updates, `p = slow + alpha * (p - slow)` in torch, one more plain update.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable

import pytest
import torch
from conftest import available_backends
from torch import nn

import fastslow.sfpo as sfpo_mod
from fastslow.kernels import Snapshot, snapshot
from fastslow.kernels._dispatch import force_backend
from fastslow.sfpo import EntropySwitch, sfpo_update

OPTIMIZERS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd": lambda ps: torch.optim.SGD(ps, lr=0.1),
    "sgd_momentum": lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
    "adamw": lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.01),
}


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


class _Setup:
    """A model, its optimizer and a fixed batch; `update()` is one full update: a loop over 2 minibatches."""

    def __init__(self, model: nn.Module, opt_name: str, x_N4: torch.Tensor, y_N2: torch.Tensor) -> None:
        self.model = model
        self.opt = OPTIMIZERS[opt_name](list(model.parameters()))
        self.x_N4, self.y_N2 = x_N4, y_N2
        self.calls = 0
        self.seen: list[list[torch.Tensor]] = []  # the parameters at the start of each update

    def params(self) -> list[torch.Tensor]:
        return [p.detach().clone() for p in self.model.parameters()]

    def update(self) -> dict[str, float]:
        self.calls += 1
        self.seen.append(self.params())
        for x_M4, y_M2 in zip(self.x_N4.chunk(2), self.y_N2.chunk(2)):
            self.opt.zero_grad()
            loss = nn.functional.mse_loss(self.model(x_M4), y_M2)
            loss.backward()
            self.opt.step()
        return {"call": self.calls, "loss": loss.item()}


def _pair(opt_name: str) -> tuple[_Setup, _Setup]:
    """Two identical set-ups: one for `sfpo_update`, one for the hand-written reference."""
    gen = torch.Generator().manual_seed(1)
    model = _net()
    x_N4 = torch.randn(8, 4, generator=gen)
    y_N2 = torch.randn(8, 2, generator=gen)
    return _Setup(model, opt_name, x_N4, y_N2), _Setup(copy.deepcopy(model), opt_name, x_N4, y_N2)


def _reference_sfpo(ref: _Setup, inner_steps: int, alpha: float) -> dict[str, float]:
    slow = ref.params()
    for _ in range(inner_steps):
        ref.update()
    with torch.no_grad():
        for p, s in zip(ref.model.parameters(), slow):
            p.copy_(s + alpha * (p - s))
    return ref.update()


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor], *, exact: bool) -> None:
    for i, (x, y) in enumerate(zip(a, b, strict=True)):
        if exact:
            assert torch.equal(x, y), f"tensor {i}: max diff {(x - y).abs().max().item()}"
        else:
            torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-6, msg=lambda m, i=i: f"tensor {i}: {m}")


def _opt_state(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [v.detach().clone() for st in opt.state.values() for _, v in sorted(st.items())]


# ---------------------------------------------------------------------------------------------- sfpo_update


@pytest.mark.parametrize("backend_name", available_backends(native=True))
@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adamw"])
@pytest.mark.parametrize(("inner_steps", "alpha"), [(3, 0.8), (1, 0.5), (2, 1.0), (2, 0.0)])
def test_matches_hand_written_sfpo(backend_name, opt_name, inner_steps, alpha):
    ours, ref = _pair(opt_name)
    with force_backend(backend_name):
        metrics = sfpo_update(ours.model.parameters(), ours.update, inner_steps=inner_steps, alpha=alpha)
    ref_metrics = _reference_sfpo(ref, inner_steps, alpha)
    # The torch backend runs the reference's very expression (float32 `s + alpha * (p - s)`), so bit for bit.
    # Triton (interpreted) and the native library may contract it into an fma: an ulp apart, then 1 more update.
    exact = backend_name == "torch"
    _assert_same(ours.params(), ref.params(), exact=exact)
    _assert_same(_opt_state(ours.opt), _opt_state(ref.opt), exact=exact)
    assert ours.calls == ref.calls == inner_steps + 1
    assert metrics["call"] == ref_metrics["call"] == inner_steps + 1
    assert not torch.equal(ours.params()[0], ours.seen[0][0]), "the parameters did not move"


def test_alpha_zero_goes_back_to_slow_exactly(backend):
    """alpha = 0: the slow correction starts from the original parameters, bit for bit, on every backend."""
    ours, _ = _pair("sgd_momentum")
    sfpo_update(ours.model.parameters(), ours.update, inner_steps=3, alpha=0.0)
    _assert_same(ours.seen[3], ours.seen[0], exact=True)


def test_alpha_zero_is_one_update_with_the_optimizer_state_advanced():
    """Stateless SGD: exactly one plain update. With momentum the params start from the same point, but the
    momentum buffers carry the K fast updates' gradients, so the result differs from one fresh GRPO update."""
    ours, ref = _pair("sgd")
    sfpo_update(ours.model.parameters(), ours.update, inner_steps=3, alpha=0.0)
    ref.update()
    _assert_same(ours.params(), ref.params(), exact=True)

    ours, ref = _pair("sgd_momentum")
    sfpo_update(ours.model.parameters(), ours.update, inner_steps=3, alpha=0.0)
    ref.update()
    assert not torch.allclose(ours.params()[0], ref.params()[0], atol=1e-4), "momentum should have carried"


def test_optimizer_state_is_carried_not_reset():
    ours, ref = _pair("adamw")
    sfpo_update(ours.model.parameters(), ours.update, inner_steps=3, alpha=0.8)
    for p in ours.model.parameters():
        st = ours.opt.state[p]
        assert int(st["step"]) == 4 * 2  # (K + 1) updates x 2 minibatches: Adam's step count never restarted
        assert st["exp_avg"].abs().sum() > 0 and st["exp_avg_sq"].abs().sum() > 0
    # ... and the moments equal those of the uninterrupted reference run.
    _reference_sfpo(ref, 3, 0.8)
    _assert_same(_opt_state(ours.opt), _opt_state(ref.opt), exact=False)


@pytest.mark.parametrize("opt_name", ["sgd_momentum", "adamw"])
def test_inner_steps_zero_is_grpo(monkeypatch, opt_name):
    ours, ref = _pair(opt_name)
    slow = snapshot(ours.model.parameters())
    slow_before = slow.buffer.clone()

    def forbidden(*args, **kwargs):
        raise AssertionError("K = 0 must not snapshot or reposition")

    monkeypatch.setattr(sfpo_mod, "snapshot", forbidden)
    monkeypatch.setattr(sfpo_mod, "reposition_", forbidden)
    monkeypatch.setattr(Snapshot, "copy_from", forbidden)
    metrics = sfpo_update(ours.model.parameters(), ours.update, inner_steps=0, alpha=0.8, slow=slow)
    ref.update()
    assert metrics == {"call": 1, "loss": metrics["loss"]} and ours.calls == 1
    _assert_same(ours.params(), ref.params(), exact=True)
    _assert_same(_opt_state(ours.opt), _opt_state(ref.opt), exact=True)
    assert torch.equal(slow.buffer, slow_before), "K = 0 touched the caller's snapshot"


def test_returns_the_slow_corrections_metrics():
    calls = []

    def update_fn() -> dict[str, int]:
        calls.append(len(calls) + 1)
        return {"call": calls[-1]}

    params = [torch.randn(5, requires_grad=True)]
    assert sfpo_update(params, update_fn, inner_steps=3) == {"call": 4}
    assert sfpo_update(params, update_fn, inner_steps=2) == {"call": 7}
    assert sfpo_update(params, update_fn, inner_steps=0) == {"call": 8}


def test_reused_snapshot_buffer():
    ours, ref = _pair("sgd_momentum")
    params = list(ours.model.parameters())
    slow = snapshot(params)
    ptrs = [slow.buffer.data_ptr(), *(v.data_ptr() for v in slow)]
    with force_backend("torch"):
        for step in range(3):
            start = ours.params()
            sfpo_update(params, ours.update, inner_steps=2, alpha=0.8, slow=slow)
            _reference_sfpo(ref, 2, 0.8)
            assert [slow.buffer.data_ptr(), *(v.data_ptr() for v in slow)] == ptrs, f"step {step}: reallocated"
            _assert_same(list(slow), start, exact=True)  # refreshed to this call's starting parameters
            _assert_same(ours.params(), ref.params(), exact=True)


def test_bad_arguments():
    ours, _ = _pair("sgd")
    params = list(ours.model.parameters())
    cases = [
        ({"inner_steps": -1}, "inner_steps"),
        ({"inner_steps": 1.5}, "inner_steps"),
        ({"inner_steps": True}, "inner_steps"),
        ({"inner_steps": "3"}, "inner_steps"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": math.inf}, "alpha"),
        ({"alpha": "0.8"}, "alpha"),
        ({"alpha": True}, "alpha"),
        ({"slow": [p.detach().clone() for p in params]}, "slow"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            sfpo_update(params, ours.update, **kwargs)
    with pytest.raises(ValueError, match="params is empty"):
        sfpo_update(iter([]), ours.update)
    with pytest.raises(ValueError, match="update_fn"):
        sfpo_update(params, None)  # type: ignore[arg-type]
    other = snapshot(_net()[0].parameters())  # a snapshot of other parameters: copy_from refuses it
    with pytest.raises(ValueError, match="do not match"):
        sfpo_update(params, ours.update, slow=other)
    assert ours.calls == 0, "a bad argument must fail before any update runs"
    # The boundaries are valid (a tensor alpha too).
    sfpo_update(params, ours.update, inner_steps=1, alpha=1)
    sfpo_update(params, ours.update, inner_steps=1, alpha=torch.tensor(0.0))


# --------------------------------------------------------------------------------------------- EntropySwitch


def _run(switch: EntropySwitch, values: list[float]) -> list[bool]:
    return [switch.update(v) for v in values]


def test_switch_never_fires_before_window_values():
    sw = EntropySwitch(window=5, threshold=1.0)
    assert sw.active and sw.switched_at is None
    assert _run(sw, [1.0, 1000.0, 1.0, 1.0]) == [True] * 4
    assert sw.last_z is None and sw.steps == 4
    # 5th value: window [1, 1000, 1, 1, 1], z < 0.
    assert sw.update(1.0) and sw.last_z is not None and sw.last_z < 0

    # A jump as the W-th value fires at once (step W-1, 0-based); one value short of W it cannot.
    sw = EntropySwitch(window=5, threshold=1.0)
    assert _run(sw, [1.0, 1.0, 1.0, 1.0, 1000.0]) == [True] * 4 + [False]
    assert sw.switched_at == 5 and sw.reason == "entropy"  # step 4's entropy fired it: step 5 is plain GRPO
    sw = EntropySwitch(window=6, threshold=1.0)
    assert _run(sw, [1.0, 1.0, 1.0, 1.0, 1000.0]) == [True] * 5 and sw.last_z is None


# W = 5 over [1, 1, 1, 1, 1, 1, 1, 5]: steps 0-3 have no z; steps 4-6 see five 1s: std 0, z = 0 / 1e-9 = 0.
# Step 7, window [1, 1, 1, 1, 5]: mean 1.8, population variance (4 * 0.8^2 + 3.2^2) / 5 = 12.8 / 5 = 2.56,
# std 1.6, z = 3.2 / (1.6 + 1e-9) = 2 - 1.25e-9. (The sample std, sqrt(12.8 / 4) = 1.789, would give z = 1.789.)
CRAFTED = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 5.0]
Z7 = 3.2 / (1.6 + 1e-9)


@pytest.mark.parametrize(
    ("threshold", "fires"),
    [
        (1.0, True),
        (1.9, True),  # fires with the population std (z ~ 2.0), would not with the sample std (z = 1.789)
        (2.0 - 2e-9, True),  # just below z
        (2.0, False),  # just above z: the 1e-9 in the denominator keeps z a hair under 2
        (2.5, False),
    ],
)
def test_switch_crafted_sequence(threshold, fires):
    sw = EntropySwitch(window=5, threshold=threshold)
    zs = []
    for v in CRAFTED:
        sw.update(torch.tensor(v))  # a 0-d tensor works as well as a float
        zs.append(sw.last_z)
    assert zs[:4] == [None] * 4 and zs[4:7] == [0.0] * 3
    assert zs[7] == pytest.approx(Z7, rel=1e-12, abs=0) and zs[7] < 2.0
    assert sw.active is not fires
    assert sw.switched_at == (8 if fires else None)
    assert sw.reason == ("entropy" if fires else None)


def test_switch_fires_at_z_equal_to_threshold():
    """`z >= threshold`: a z exactly at the threshold fires, one float above it does not."""
    probe = EntropySwitch(window=5, threshold=100.0)
    _run(probe, CRAFTED)
    z7 = probe.last_z
    assert z7 is not None
    assert _run(EntropySwitch(window=5, threshold=z7), CRAFTED)[-1] is False
    assert _run(EntropySwitch(window=5, threshold=math.nextafter(z7, math.inf)), CRAFTED)[-1] is True


def test_switch_uses_the_last_w_values_including_the_newest():
    # W = 3 over [5, 0, 0, 1]. Step 2, window [5, 0, 0]: z < 0. Step 3, window [0, 0, 1]: mean 1/3,
    # population std sqrt(2) / 3, z = (2/3) / (sqrt(2)/3 + 1e-9) ~ sqrt(2) >= 1: fires. The whole history [5, 0, 0, 1]
    # (mean 1.5) or the window before the newest ([5, 0, 0], mean 5/3) would both give z < 0 at step 3.
    sw = EntropySwitch(window=3, threshold=1.0)
    assert _run(sw, [5.0, 0.0, 0.0, 1.0]) == [True, True, True, False]
    assert sw.last_z == pytest.approx((2 / 3) / (math.sqrt(2) / 3 + 1e-9), rel=1e-12) and sw.switched_at == 4


def test_switch_is_permanent():
    sw = EntropySwitch(window=5, threshold=1.0)
    assert _run(sw, CRAFTED) == [True] * 7 + [False]
    assert _run(sw, [1.0] * 20 + [0.5, 0.1]) == [False] * 22
    assert not sw.active and sw.switched_at == 8 and sw.reason == "entropy" and sw.steps == 30


def test_stop_step():
    # The seed: `stop_sfpo_step >= global_steps`, steps from 1: stop 3 runs SFPO on its steps 1, 2, 3 (ours 0, 1, 2).
    sw = EntropySwitch(window=30, stop_step=3)
    decided = [sw.active]  # step 0's update
    decided += _run(sw, [1.0] * 5)  # the call after step k decides step k + 1
    assert decided == [True, True, True, False, False, False]
    assert sum(decided) == 3
    assert not sw.active and sw.switched_at == 3 and sw.reason == "stop_step"

    sw = EntropySwitch(stop_step=1)  # SFPO on step 0 only
    assert sw.active and _run(sw, [1.0]) == [False] and sw.switched_at == 1

    sw = EntropySwitch(stop_step=0)  # never SFPO
    assert not sw.active
    assert _run(sw, [1.0, 1.0]) == [False, False] and sw.switched_at == 0 and sw.reason == "stop_step"

    sw = EntropySwitch(window=5, threshold=1.0, stop_step=100)  # the entropy switch still applies before it
    assert _run(sw, CRAFTED) == [True] * 7 + [False] and sw.reason == "entropy"


def _roundtrip(state: dict) -> dict:
    """Through a checkpoint file, loaded the way checkpoints are: weights_only=True."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("split", [0, 3, 6, 12, 20, 27])
def test_switch_state_dict_resumes_exactly(split):
    gen = torch.Generator().manual_seed(2)
    values = (1.0 + 0.05 * torch.randn(30, generator=gen, dtype=torch.float64)).tolist()
    values[22] = 3.0  # fires at step 22
    kwargs = {"window": 6, "threshold": 2.0}  # the noise peaks at z = 1.52 (step 17), the planted jump 2.23
    whole = EntropySwitch(**kwargs)
    expected = [(whole.update(v), whole.last_z, whole.switched_at) for v in values]
    assert whole.switched_at == 23  # step 22 fired it

    first = EntropySwitch(**kwargs)
    got = [(first.update(v), first.last_z, first.switched_at) for v in values[:split]]
    saved = _roundtrip(first.state_dict())
    resumed = EntropySwitch(**kwargs)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == first.state_dict()
    assert resumed.active == first.active and resumed.steps == split
    got += [(resumed.update(v), resumed.last_z, resumed.switched_at) for v in values[split:]]
    assert got == expected
    assert resumed.state_dict() == whole.state_dict()


def test_switch_bad_input():
    for kwargs, name in [
        ({"window": 1}, "window"),
        ({"window": 2.5}, "window"),
        ({"window": True}, "window"),
        ({"threshold": math.nan}, "threshold"),
        ({"threshold": math.inf}, "threshold"),
        ({"threshold": "1"}, "threshold"),
        ({"stop_step": -1}, "stop_step"),
        ({"stop_step": 2.0}, "stop_step"),
    ]:
        with pytest.raises(ValueError, match=name):
            EntropySwitch(**kwargs)

    sw = EntropySwitch(window=3, threshold=1.0)
    _run(sw, [1.0, 1.0])
    before = sw.state_dict()
    for bad in [math.nan, math.inf, -math.inf, "1.0", None, torch.tensor([1.0, 2.0]), torch.tensor(math.nan)]:
        with pytest.raises(ValueError, match="entropy"):
            sw.update(bad)  # type: ignore[arg-type]
    assert sw.state_dict() == before, "a rejected entropy must leave no trace"

    good = sw.state_dict()
    for patch, name in [
        ({"history": [1.0, math.nan]}, "history"),
        ({"steps": 1}, "steps"),  # fewer steps than recorded values
        ({"reason": "bored", "switched_at": 0}, "reason"),
        ({"reason": "entropy"}, "switched_at"),
        ({"reason": "entropy", "switched_at": 3}, "switched_at"),  # after the step count
        ({"reason": "entropy", "switched_at": 0}, "switched_at"),  # only stop_step=0 switches before step 1
        ({"last_z": math.inf}, "last_z"),
    ]:
        with pytest.raises(ValueError, match=name):
            sw.load_state_dict({**good, **patch})
    with pytest.raises(ValueError, match="missing"):
        sw.load_state_dict({"history": []})
    assert sw.state_dict() == before
