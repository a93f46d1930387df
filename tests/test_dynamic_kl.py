"""fastslow.dynamic_kl: the per-group KL coefficient, the three modes, and the controller's state."""

from __future__ import annotations

import io

import pytest
import torch

from fastslow.dynamic_kl import KL_MODES, KLController, group_kl_coef


def _close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=torch.float32), atol=1e-9, rtol=1e-6)


def test_coef_at_0_half_1() -> None:
    # 0.001 + 0.009 * (1 - acc): acc 0 -> 0.01, acc 0.5 -> 0.0055, acc 1 -> 0.001.
    out = group_kl_coef(torch.tensor([0.0, 0.5, 1.0]))
    assert out.dtype == torch.float32
    _close(out, [0.01, 0.0055, 0.001])


def test_coef_custom_betas() -> None:
    # 0.1 + (0.5 - 0.1) * (1 - 0.25) = 0.1 + 0.3 = 0.4; equal betas give a constant.
    _close(group_kl_coef(torch.tensor([0.25]), beta_min=0.1, beta_max=0.5), [0.4])
    _close(group_kl_coef(torch.tensor([0.0, 1.0]), 0.02, 0.02), [0.02, 0.02])


# Three groups of four: accuracies [1, 0.25, 0]; the batch accuracy is 5 / 12.
CORRECT = torch.tensor([1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)


def test_fixed_mode() -> None:
    ctl = KLController("fixed", coef=0.02)
    _close(ctl.coefficients(CORRECT, 4), [0.02] * 12)


def test_batch_accuracy_mode() -> None:
    # 0.001 + 0.009 * (1 - 5/12) = 0.001 + 0.009 * 7/12 = 0.001 + 0.00525 = 0.00625 for every sequence.
    ctl = KLController("batch_accuracy")
    _close(ctl.coefficients(CORRECT, 4), [0.00625] * 12)


def test_group_accuracy_mode() -> None:
    # acc 1 -> 0.001; acc 0.25 -> 0.001 + 0.009 * 0.75 = 0.00775; acc 0 -> 0.01; each repeated over its 4 sequences.
    ctl = KLController("group_accuracy")
    out = ctl.coefficients(CORRECT, 4)
    assert out.shape == (12,) and out.dtype == torch.float32
    _close(out, [0.001] * 4 + [0.00775] * 4 + [0.01] * 4)


def test_group_coefficients_from_group_accuracy() -> None:
    ctl = KLController("group_accuracy")
    _close(ctl.group_coefficients(torch.tensor([1.0, 0.25, 0.0]), 2), [0.001] * 2 + [0.00775] * 2 + [0.01] * 2)
    ctl = KLController("batch_accuracy")
    # mean accuracy 0.5 -> 0.0055.
    _close(ctl.group_coefficients(torch.tensor([1.0, 0.5, 0.0]), 1), [0.0055] * 3)


def test_metrics_summarise_the_last_call() -> None:
    ctl = KLController("group_accuracy")
    assert ctl.metrics() == {}
    ctl.coefficients(CORRECT, 4)
    m = ctl.metrics()
    # mean of [0.001, 0.00775, 0.01] (equal group sizes) = 0.01875 / 3 = 0.00625.
    assert m.keys() == {"kl/coef_mean", "kl/coef_min", "kl/coef_max", "kl/accuracy"}
    assert m["kl/coef_mean"] == pytest.approx(0.00625, rel=1e-6)
    assert m["kl/coef_min"] == pytest.approx(0.001, rel=1e-6)
    assert m["kl/coef_max"] == pytest.approx(0.01, rel=1e-6)
    assert m["kl/accuracy"] == pytest.approx(5 / 12, rel=1e-6)


def test_state_dict_round_trip() -> None:
    ctl = KLController("group_accuracy", beta_min=0.002, beta_max=0.02)
    fresh = KLController("group_accuracy", beta_min=0.002, beta_max=0.02)
    assert fresh.state_dict() == {"steps": 0, "last": None}
    ctl.coefficients(CORRECT, 4)
    ctl.coefficients(torch.tensor([0.0, 1.0, 1.0, 1.0]), 2)
    state = ctl.state_dict()
    assert state["steps"] == 2

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, weights_only=True))
    assert fresh.state_dict() == state
    assert fresh.metrics() == ctl.metrics()
    # Both continue identically.
    torch.testing.assert_close(fresh.coefficients(CORRECT, 4), ctl.coefficients(CORRECT, 4), atol=0, rtol=0)
    assert fresh.state_dict() == ctl.state_dict()


def test_state_dict_is_a_copy() -> None:
    ctl = KLController("fixed")
    ctl.coefficients(CORRECT, 4)
    state = ctl.state_dict()
    state["last"]["coef_mean"] = 123.0
    assert ctl.metrics()["kl/coef_mean"] == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(mode="group_accuracy_based"), "fixed.*batch_accuracy.*group_accuracy"),
        (dict(mode="fixed", coef=-0.1), "coef"),
        (dict(mode="fixed", coef=float("nan")), "coef"),
        (dict(mode="group_accuracy", beta_min=0.02, beta_max=0.01), "beta_min must be <= beta_max"),
        (dict(mode="group_accuracy", beta_min=-0.001), "beta_min"),
        (dict(mode="group_accuracy", beta_max=float("inf")), "beta_max"),
    ],
)
def test_bad_controller_config(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KLController(**kwargs)


def test_modes_listed() -> None:
    assert KL_MODES == ("fixed", "batch_accuracy", "group_accuracy")


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ((torch.tensor([0.5, 1.5]), 1), "correct"),
        ((torch.tensor([2, 0]), 1), "correct"),
        ((torch.tensor([0.5, float("nan")]), 1), "correct"),
        ((torch.ones(2, 2), 2), "correct"),
        (([1, 0], 2), "correct"),
        ((torch.ones(6), 4), "group_size"),
        ((torch.ones(4), 0), "group_size"),
    ],
)
def test_bad_coefficients_input(args: tuple, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        KLController("group_accuracy").coefficients(*args)


def test_bad_group_kl_input() -> None:
    with pytest.raises(ValueError, match="group_accuracy"):
        group_kl_coef(torch.tensor([-0.1]))
    with pytest.raises(ValueError, match="beta_min"):
        group_kl_coef(torch.tensor([0.5]), beta_min=0.1, beta_max=0.01)
    with pytest.raises(ValueError, match="group_accuracy is empty"):
        KLController("fixed").group_coefficients(torch.zeros(0), 4)


@pytest.mark.parametrize(
    "state",
    [
        {"steps": 1},
        {"steps": -1, "last": None},
        {"steps": 1, "last": {"coef_mean": 0.1}},
        [1, None],
    ],
)
def test_bad_state(state: object) -> None:
    with pytest.raises(ValueError, match="KLController state"):
        KLController("fixed").load_state_dict(state)  # type: ignore[arg-type]


def test_merge_summary_gives_the_runs_summary() -> None:
    """Two ranks' summaries merged as the step merges them (mean of means, min and max over ranks), by hand."""
    ranks = []
    for acc in ([1.0, 0.5], [0.0, 0.25]):
        kl = KLController("group_accuracy")
        kl.coefficients(torch.tensor(acc), 2)
        ranks.append(kl)
    summaries = [dict(k.metrics()) for k in ranks]
    values = iter([[s["kl/coef_mean"], s["kl/accuracy"]] for s in summaries])
    maxima = iter([[-s["kl/coef_min"], s["kl/coef_max"]] for s in summaries])
    mine = ranks[0]
    # stand-ins for the all-reduces, over the two ranks' inputs
    both_means = [next(values), next(values)]
    both_max = [next(maxima), next(maxima)]
    mine.merge_summary(
        lambda v: [(a + b) / 2 for a, b in zip(*both_means)], lambda v: [max(a, b) for a, b in zip(*both_max)]
    )
    got = mine.metrics()
    assert got["kl/coef_mean"] == pytest.approx((summaries[0]["kl/coef_mean"] + summaries[1]["kl/coef_mean"]) / 2)
    assert got["kl/accuracy"] == pytest.approx(0.4375)
    assert got["kl/coef_min"] == min(s["kl/coef_min"] for s in summaries)
    assert got["kl/coef_max"] == max(s["kl/coef_max"] for s in summaries)
    fresh = KLController("group_accuracy")
    fresh.merge_summary(lambda v: 1 / 0, lambda v: 1 / 0)  # no summary yet: nothing to merge, nothing called
    assert fresh.metrics() == {}
