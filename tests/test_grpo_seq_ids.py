"""The GRPO kernels on packed rows (`seq_ids`): the same loss and gradients as the padded `[B, T]` layout.

Sequences of uneven length (one with no response token) are laid out twice: padded, one per row, and packed, several
per row with trailing padding (id -1). Every `loss_agg` mode must give the same loss, the same gradient per token
and the same metrics, on each backend, and match the float64 reference given the same `seq_ids`.
"""

from __future__ import annotations

import pytest
import torch
from _tolerance import assert_close
from conftest import DEVICE, triton_runs_here

from fastslow.kernels import LOSS_AGGS, grpo_loss, grpo_loss_ref, linear_grpo_loss
from fastslow.kernels._dispatch import force_backend

LENGTHS = [7, 1, 12, 3, 5]  # tokens per sequence; the second has none counted (an empty response)
ROWS = [[2, 1], [0, 3, 4]]  # packed rows: which sequences, in order


def _padded(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    B, T = len(LENGTHS), max(LENGTHS)
    logp = -torch.rand(B, T, generator=g) * 3 - 0.01
    mask = torch.zeros(B, T, dtype=torch.bool)
    for i, n in enumerate(LENGTHS):
        mask[i, 1:n] = torch.rand(n - 1, generator=g) > 0.2 if i != 1 else False
        mask[i, 1] = i != 1
    return {
        "logp": logp,
        "old": logp + 0.3 * torch.randn(B, T, generator=g),
        "ref": logp + 0.3 * torch.randn(B, T, generator=g),
        "adv": torch.randn(B, generator=g),
        "beta": torch.rand(B, generator=g) * 0.05 + 0.001,
        "mask": mask,
    }


def _index() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(seq [R, W], pos [R, W], seq_ids [R, W]) of the packed rows; padding has seq -1."""
    width = max(sum(LENGTHS[i] for i in row) for row in ROWS) + 2  # trailing padding on every row
    seq = torch.full((len(ROWS), width), -1)
    pos = torch.zeros(len(ROWS), width, dtype=torch.long)
    ids = torch.full((len(ROWS), width), -1)
    for r, row in enumerate(ROWS):
        o = 0
        for k, i in enumerate(row):
            seq[r, o : o + LENGTHS[i]] = i
            pos[r, o : o + LENGTHS[i]] = torch.arange(LENGTHS[i])
            ids[r, o : o + LENGTHS[i]] = k + 3 * r  # any ids unique per sequence will do
            o += LENGTHS[i]
    return seq, pos, ids


def _pack(x: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
    """`[B, T, ...]` padded values laid out as packed `[R, W, ...]` rows (`fill` where seq is -1)."""
    out = x[seq.clamp(min=0), pos]
    pad = (seq < 0).view(*seq.shape, *([1] * (x.dim() - 2)))
    return torch.where(pad, torch.as_tensor(fill, dtype=x.dtype), out)


@pytest.mark.parametrize("loss_agg", LOSS_AGGS)
def test_grpo_loss_packed_equals_padded(backend: str, loss_agg: str) -> None:
    d = {k: v.to(DEVICE) for k, v in _padded().items()}
    seq, pos, ids = (t.to(DEVICE) for t in _index())
    T = d["logp"].shape[1]
    norm = {"norm_len": float(T)} if loss_agg == "seq-mean-token-sum-norm" else {}
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, loss_agg=loss_agg, **norm)

    x = d["logp"].clone().requires_grad_()
    loss, metrics = grpo_loss(x, d["old"], d["adv"], d["mask"], ref_logp=d["ref"], kl_coef=d["beta"], **kw)
    loss.backward()

    p = {k: _pack(v, seq, pos) for k, v in d.items() if v.dim() == 2}
    p_beta = _pack(d["beta"][:, None].expand(-1, T), seq, pos)
    p_adv = _pack(d["adv"][:, None].expand(-1, T), seq, pos)
    xp = p["logp"].clone().requires_grad_()
    args = (p["old"], p_adv, p["mask"])
    loss_p, metrics_p = grpo_loss(xp, *args, ref_logp=p["ref"], kl_coef=p_beta, seq_ids=ids, **kw)
    loss_p.backward()

    assert_close(loss_p, loss, torch.float32, "value")
    assert_close(xp.grad, _pack(x.grad, seq, pos), torch.float32, "grad")
    for name in metrics:
        assert_close(metrics_p[name], metrics[name], torch.float32, "value")

    x64 = p["logp"].double().requires_grad_()
    loss64, _ = grpo_loss_ref(
        x64, p["old"].double(), p_adv.double(), p["mask"], ref_logp=p["ref"].double(), kl_coef=p_beta.double(),
        seq_ids=ids, **kw,
    )  # fmt: skip
    loss64.backward()
    assert_close(loss_p, loss64, torch.float32, "value")
    assert_close(xp.grad, x64.grad, torch.float32, "grad")


# The fused op inside is the one tested above on every backend; Triton's interpreter is slow, so the fused linear
# loss runs it for the one mode with per-token weights only.
LINEAR_CASES = [("torch", agg) for agg in LOSS_AGGS] + [("triton", "seq-mean-token-mean")] * triton_runs_here()


@pytest.mark.parametrize(("backend_name", "loss_agg"), LINEAR_CASES)
def test_linear_grpo_loss_packed_equals_padded(backend_name: str, loss_agg: str) -> None:
    with force_backend(backend_name):
        _linear_packed_equals_padded(loss_agg)


def _linear_packed_equals_padded(loss_agg: str) -> None:
    d = {k: v.to(DEVICE) for k, v in _padded(1).items()}
    seq, pos, ids = (t.to(DEVICE) for t in _index())
    B, T = d["logp"].shape
    H, V = 16, 23
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(B, T, H, generator=g).to(DEVICE)
    weight = (torch.randn(V, H, generator=g) * 0.3).to(DEVICE)
    targets = torch.randint(0, V, (B, T), generator=g).to(DEVICE)
    norm = {"norm_len": float(T)} if loss_agg == "seq-mean-token-sum-norm" else {}
    kw = dict(loss_agg=loss_agg, entropy_coef=0.01, temperature=0.9, chunk_tokens=8, **norm)

    h, w = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss, metrics = linear_grpo_loss(h, w, targets, d["old"], d["adv"], d["mask"], **kw)
    loss.backward()

    hp, wp = _pack(hidden, seq, pos).requires_grad_(), weight.clone().requires_grad_()
    p_adv = _pack(d["adv"][:, None].expand(-1, T), seq, pos)
    loss_p, metrics_p = linear_grpo_loss(
        hp, wp, _pack(targets, seq, pos), _pack(d["old"], seq, pos), p_adv, _pack(d["mask"], seq, pos),
        seq_ids=ids, **kw,
    )  # fmt: skip
    loss_p.backward()

    assert_close(loss_p, loss, torch.float32, "value")
    assert_close(hp.grad, _pack(h.grad, seq, pos), torch.float32, "grad")
    assert_close(wp.grad, w.grad, torch.float32, "grad")
    for name in metrics:
        assert_close(metrics_p[name], metrics[name], torch.float32, "value")


def test_seq_ids_are_checked() -> None:
    d = _padded()
    with pytest.raises(ValueError, match="seq_ids must be an integer"):
        grpo_loss(d["logp"], d["old"], d["adv"], d["mask"], seq_ids=d["logp"])
    with pytest.raises(ValueError, match="seq_ids"):
        grpo_loss(d["logp"], d["old"], d["adv"], d["mask"], seq_ids=torch.zeros(2, 3, dtype=torch.long))
    ids = torch.zeros_like(d["mask"], dtype=torch.long)
    ids[0, 1] = -1  # a counted token of no sequence
    with pytest.raises(ValueError, match="seq_ids is -1"):
        grpo_loss(d["logp"], d["old"], d["adv"], d["mask"], seq_ids=ids)
    with pytest.raises(ValueError, match=r"seq_ids must be in \[-1"):
        grpo_loss(d["logp"], d["old"], d["adv"], d["mask"], seq_ids=ids.abs() + d["mask"].numel())
