"""bench.learning_stats: auc, smoothing, target, rollouts to target, bootstraps, verdicts and bands on hand curves."""

from __future__ import annotations

import pytest

from bench import learning_stats as S
from bench.learning_report import Curve

N = 200  # bootstrap draws: enough for the checks, fast


def _curve(rollouts: list[float], accuracy: list[float]) -> Curve:
    """A curve with one evaluation per (rollouts, accuracy) pair, a step and 1 s per evaluation."""
    k = len(rollouts)
    return Curve(list(range(k)), list(rollouts), [float(i) for i in range(k)], list(accuracy), [None] * k)


# auc


def test_auc_triangle_and_trapezoid() -> None:
    assert S.auc(_curve([0, 10], [0.0, 1.0]), 10) == pytest.approx(0.5)
    assert S.auc(_curve([0, 10], [0.2, 0.6]), 10) == pytest.approx(0.4)
    assert S.auc(_curve([0, 5, 10], [0.0, 1.0, 1.0]), 10) == pytest.approx((2.5 + 5.0) / 10)


def test_auc_holds_last_value_past_end() -> None:
    assert S.auc(_curve([0, 10], [0.0, 1.0]), 20) == pytest.approx((5.0 + 10.0) / 20)
    assert S.auc(_curve([0], [0.3]), 50) == pytest.approx(0.3)


def test_auc_interpolates_at_budget() -> None:
    c = _curve([0, 10, 20], [0.0, 1.0, 0.0])
    assert S.auc(c, 5) == pytest.approx(1.25 / 5)  # accuracy 0.5 at 5: triangle 5 * 0.5 / 2
    assert S.auc(c, 15) == pytest.approx((5.0 + 3.75) / 15)  # 10..15 goes 1 -> 0.5
    assert S.auc(c, 10) == pytest.approx(0.5)  # a point exactly at the budget


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="budget"):
        S.auc(_curve([0, 10], [0.0, 1.0]), 0)
    with pytest.raises(ValueError, match="budget"):
        S.auc(_curve([0, 10], [0.0, 1.0]), -1)
    with pytest.raises(ValueError, match="empty"):
        S.auc(_curve([], []), 10)


# smooth


def test_smooth_shrinks_window_at_edges() -> None:
    assert S.smooth([0, 3, 0, 3, 0], 3) == pytest.approx([0, 1, 2, 1, 0])
    assert S.smooth([0, 0, 0, 0, 10], 5) == pytest.approx([0, 0, 2, 10 / 3, 10])
    assert S.smooth([1.0, 5.0], 3) == [1.0, 5.0]
    assert S.smooth([], 3) == []


def test_smooth_window_one_is_identity_and_even_rejected() -> None:
    assert S.smooth([0.1, 0.9, 0.2], 1) == [0.1, 0.9, 0.2]
    with pytest.raises(ValueError, match="odd"):
        S.smooth([1.0, 2.0], 2)
    with pytest.raises(ValueError, match="odd"):
        S.smooth([1.0, 2.0], 0)


# mean_curve and target


def test_mean_curve_interpolates_and_holds() -> None:
    a = _curve([0, 10], [0.0, 1.0])
    b = _curve([0, 20], [0.2, 0.4])
    assert S.mean_curve([a, b], [0, 5, 10, 30]) == pytest.approx([0.1, (0.5 + 0.25) / 2, (1.0 + 0.3) / 2, 0.7])


def test_target_from_two_hand_curves() -> None:
    c1 = _curve([0, 10, 20, 30], [0.1, 0.3, 0.5, 0.5])
    c2 = _curve([0, 15, 30], [0.3, 0.6, 0.6])
    # grid [0, 10, 15, 20, 30]: mean [0.2, 0.4, 0.5, 0.55, 0.55]; smoothed [0.2, 0.3667, 0.4833, 0.5333, 0.55]
    t = S.target([c1, c2], fraction=0.9, window=3)
    assert t["start"] == pytest.approx(0.2)
    assert t["plateau"] == pytest.approx(0.55)
    assert t["target"] == pytest.approx(0.2 + 0.9 * 0.35)
    assert (t["fraction"], t["window"]) == (0.9, 3)


def test_target_ignores_a_single_spike() -> None:
    t = S.target([_curve([0, 1, 2, 3, 4], [0.0, 0.0, 1.0, 0.0, 0.0])], fraction=1.0)
    assert t["plateau"] == pytest.approx(1 / 3)
    assert t["target"] == pytest.approx(1 / 3)


# rollouts_to


def test_rollouts_to_interpolates_on_smoothed_curve() -> None:
    c = _curve([0, 10, 20, 30, 40], [0.0, 0.3, 0.0, 0.6, 0.6])  # smoothed (3): [0, 0.1, 0.3, 0.4, 0.6]
    assert S.rollouts_to(c, 0.35, window=3) == pytest.approx(25.0)
    assert S.rollouts_to(c, 0.3, window=3) == pytest.approx(20.0)
    assert S.rollouts_to(c, 0.35, window=1) == pytest.approx(20 + 0.35 / 0.6 * 10)  # the raw 0.3 at 10 dips to 0
    assert S.rollouts_to(c, 0.25, window=1) == pytest.approx(10 * 0.25 / 0.3)


def test_rollouts_to_start_and_never() -> None:
    c = _curve([0, 10, 20], [0.5, 0.6, 0.7])
    assert S.rollouts_to(c, 0.4) == 0.0
    assert S.rollouts_to(c, 0.8) is None
    assert S.rollouts_to(c, 0.7, window=3) == pytest.approx(20.0)  # smoothing keeps the last value
    spike = _curve([0, 10, 20], [0.0, 0.9, 0.0])  # smoothed (3): [0, 0.3, 0]
    assert S.rollouts_to(spike, 0.5, window=3) is None
    assert S.rollouts_to(spike, 0.5, window=1) == pytest.approx(10 * 0.5 / 0.9)


# bootstrap


def test_bootstrap_deterministic_and_contains_point() -> None:
    values = {0: 0.1, 1: 0.5, 2: 0.3, 3: 0.9, 4: 0.4}
    first = S.bootstrap(values, n=N, seed=7)
    assert S.bootstrap(values, n=N, seed=7) == first
    assert S.bootstrap(dict(reversed(values.items())), n=N, seed=7) == first  # seed order does not matter
    point, low, high = first
    assert point == pytest.approx(0.44)
    assert low < point < high
    assert low >= 0.1 and high <= 0.9


def test_bootstrap_constant_and_single_value() -> None:
    assert S.bootstrap({s: 0.5 for s in range(6)}, n=N) == pytest.approx((0.5, 0.5, 0.5))
    assert S.bootstrap({3: 0.25}, n=N) == (0.25, 0.25, 0.25)


def test_bootstrap_other_stat_and_bad_input() -> None:
    import numpy as np

    point, low, high = S.bootstrap({0: 0.0, 1: 0.1, 2: 10.0}, n=N, stat=np.median)
    assert point == pytest.approx(0.1)
    assert low <= point <= high
    with pytest.raises(ValueError, match="no values"):
        S.bootstrap({}, n=N)
    with pytest.raises(ValueError, match="level"):
        S.bootstrap({0: 1.0, 1: 2.0}, n=N, level=1.0)


# paired


def test_paired_diff_constant_difference_collapses() -> None:
    a = {s: 0.3 + 0.1 * s for s in range(5)}
    b = {s: 0.1 + 0.1 * s for s in range(5)}
    r = S.paired(a, b, kind="diff", n=N)
    assert (r["point"], r["low"], r["high"]) == pytest.approx((0.2, 0.2, 0.2))
    assert r["seeds"] == [0, 1, 2, 3, 4]
    assert (r["n_seeds"], r["replaced"], r["dropped"], r["kind"], r["level"]) == (5, 0, 0, "diff", 0.95)


def test_paired_diff_drops_none_and_unpaired_seeds() -> None:
    a = {0: 1.0, 1: 2.0, 2: None, 3: 4.0, 9: 5.0}
    b = {0: 0.0, 1: 0.0, 2: 0.0, 3: 0.0}
    r = S.paired(a, b, n=N)
    assert r["seeds"] == [0, 1, 3]
    assert (r["dropped"], r["unpaired"], r["replaced"]) == (1, 1, 0)
    assert r["point"] == pytest.approx(7 / 3)
    assert r["low"] <= r["point"] <= r["high"]


def test_paired_ratio_replaces_none_with_missing() -> None:
    a = {0: 10.0, 1: 20.0, 2: None, 3: 30.0}
    b = {0: 20.0, 1: 40.0, 2: 50.0, 3: 60.0}
    r = S.paired(a, b, kind="ratio", n=N, missing=100.0)
    assert r["point"] == pytest.approx((10 + 20 + 100 + 30) / 4 / ((20 + 40 + 50 + 60) / 4))
    assert (r["replaced"], r["dropped"], r["n_seeds"], r["seeds"]) == (1, 0, 4, [0, 1, 2, 3])
    assert r["low"] <= r["point"] <= r["high"]
    dropped = S.paired(a, b, kind="ratio", n=N)
    assert (dropped["replaced"], dropped["dropped"], dropped["n_seeds"]) == (0, 1, 3)
    assert (dropped["point"], dropped["low"], dropped["high"]) == pytest.approx((0.5, 0.5, 0.5))  # a = b / 2


def test_paired_needs_two_seeds() -> None:
    with pytest.raises(ValueError, match=r"got 1.*dropped for None \[1\]"):
        S.paired({0: 1.0, 1: None}, {0: 0.5, 1: 0.5}, n=N)
    with pytest.raises(ValueError, match=r"got 1.*only one side \[1, 2\]"):
        S.paired({0: 1.0, 1: 2.0}, {0: 0.5, 2: 0.5}, kind="ratio", n=N)
    with pytest.raises(ValueError, match="kind"):
        S.paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}, kind="sum", n=N)


# verdict


@pytest.mark.parametrize(
    ("low", "high", "direction", "expected"),
    [
        (0.6, 0.9, ">=", "holds"),
        (0.5, 0.9, ">=", "holds"),
        (0.1, 0.4, ">=", "does not"),
        (0.4, 0.6, ">=", "cannot tell"),
        (0.1, 0.4, "<=", "holds"),
        (0.1, 0.5, "<=", "holds"),
        (0.6, 0.9, "<=", "does not"),
        (0.4, 0.6, "<=", "cannot tell"),
    ],
)
def test_verdict(low: float, high: float, direction: str, expected: str) -> None:
    assert S.verdict(low, high, 0.5, direction) == expected


def test_verdict_rejects_other_directions() -> None:
    with pytest.raises(ValueError, match="direction"):
        S.verdict(0.1, 0.2, 0.5, ">")


# band and plot


def test_band_shape_contains_mean_and_is_deterministic() -> None:
    curves = [_curve([0, 10, 20], [0.1, 0.4, 0.6]), _curve([0, 15], [0.2, 0.5]), _curve([0, 20], [0.0, 0.9])]
    grid = [0, 5, 10, 20, 40]
    mean, low, high = S.band(curves, grid, n=N)
    assert len(mean) == len(low) == len(high) == len(grid)
    assert mean == pytest.approx(S.mean_curve(curves, grid))
    assert all(lo <= m <= hi for lo, m, hi in zip(low, mean, high))
    assert any(hi - lo > 0.05 for lo, hi in zip(low, high))
    assert S.band(curves, grid, n=N) == (mean, low, high)


def test_band_identical_curves_collapse() -> None:
    c = _curve([0, 10], [0.2, 0.8])
    mean, low, high = S.band([c, c, c], [0, 5, 10], n=N)
    assert mean == pytest.approx([0.2, 0.5, 0.8])
    assert low == pytest.approx(mean) and high == pytest.approx(mean)


def test_plot_bands_writes_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    groups = {"grpo": [_curve([0, 10, 20], [0.1, 0.4, 0.5]), _curve([0, 10, 20], [0.2, 0.3, 0.6])],
              "sfpo": [_curve([0, 8, 16, 24], [0.1, 0.5, 0.6, 0.6]), _curve([0, 12, 24], [0.2, 0.5, 0.7])]}  # fmt: skip
    path = tmp_path / "sub" / "bands.png"
    assert S.plot_bands(groups, path, title="test", budget=20) is None
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 1000
