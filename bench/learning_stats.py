"""Statistics for the learning comparison over seeds: area under the curve, a smoothed target, rollouts to reach it,
percentile bootstrap intervals (plain and paired by seed), verdicts against a threshold and bootstrap bands.

Seeds are paired: the same seed means the same data order and initialization in every algorithm, so comparisons
resample seeds jointly. Curves are held-out accuracy against rollouts (`bench.learning_report.Curve`), read as
piecewise linear between evaluations and held at their last value past the end.

Smoothing (`smooth`) is a centered moving average whose window shrinks symmetrically at the edges, so it stays
centered: the first and last values are kept as they are (no pull from later evaluations at the start).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bench.learning_report import Curve

__all__ = [
    "auc",
    "band",
    "bootstrap",
    "mean_curve",
    "paired",
    "plot_bands",
    "rollouts_to",
    "smooth",
    "target",
    "verdict",
]

KINDS = ("diff", "ratio")
DIRECTIONS = (">=", "<=")


def _check(c: Curve) -> None:
    """Raise ValueError if `c` has no evaluations or its rollouts and accuracies differ in length."""
    if not c.accuracy:
        raise ValueError("empty curve (no evaluations)")
    if len(c.rollouts) != len(c.accuracy):
        raise ValueError(f"curve has {len(c.rollouts)} rollouts but {len(c.accuracy)} accuracies")


def _at(c: Curve, x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Accuracy of `c` linearly interpolated at rollouts `x` (first/last value held outside the curve)."""
    _check(c)
    return np.interp(np.asarray(x, dtype=float), np.asarray(c.rollouts, dtype=float), np.asarray(c.accuracy, float))


def _check_level(level: float, n: int) -> None:
    """Raise ValueError unless 0 < level < 1 and n >= 1."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n < 1:
        raise ValueError(f"n (bootstrap draws) must be >= 1, got {n}")


def _quantiles(draws: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """The percentile interval of `draws` along axis 0 at confidence `level`."""
    tail = (1.0 - level) / 2.0
    return np.quantile(draws, tail, axis=0), np.quantile(draws, 1.0 - tail, axis=0)


def auc(c: Curve, budget: float) -> float:
    """Mean held-out accuracy over rollouts [0, budget]: the area under the piecewise-linear accuracy-vs-rollouts
    curve divided by `budget`. The last value is held past the curve's end; points past `budget` are ignored
    (the curve is interpolated at `budget`)."""
    if budget <= 0:
        raise ValueError(f"budget must be > 0, got {budget}")
    _check(c)
    inner = [float(r) for r in c.rollouts if 0.0 < r < budget]
    xs = np.array([0.0, *inner, float(budget)])
    ys = _at(c, xs)
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))
    return area / float(budget)


def smooth(values: Sequence[float], window: int = 3) -> list[float]:
    """Centered moving average over an odd `window`, shrunk symmetrically at the edges (same length out; the first
    and last values are unchanged). `window` 1 is the identity."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number, got {window}")
    v = [float(x) for x in values]
    half = window // 2
    out = []
    for i in range(len(v)):
        h = min(half, i, len(v) - 1 - i)
        out.append(sum(v[i - h : i + h + 1]) / (2 * h + 1))
    return out


def mean_curve(curves: Sequence[Curve], grid: Sequence[float]) -> list[float]:
    """Per grid point, the mean over `curves` of their accuracy interpolated at that many rollouts."""
    if not curves:
        raise ValueError("no curves")
    return [float(v) for v in np.mean([_at(c, grid) for c in curves], axis=0)]


def target(grpo: Sequence[Curve], fraction: float = 0.9, window: int = 3) -> dict:
    """The target accuracy from the smoothed mean GRPO curve (never one evaluation's maximum): on the union of the
    curves' rollouts, m = smooth(mean_curve), target = m[0] + fraction * (max(m) - m[0])."""
    if not grpo:
        raise ValueError("no GRPO curves")
    grid = sorted({float(r) for c in grpo for r in c.rollouts})
    m = smooth(mean_curve(grpo, grid), window)
    start, plateau = m[0], max(m)
    return {"target": start + fraction * (plateau - start), "start": start, "plateau": plateau,
            "fraction": fraction, "window": window}  # fmt: skip


def rollouts_to(c: Curve, target: float, window: int = 3) -> float | None:
    """The rollouts at which the run's smoothed accuracy first reaches `target`, linearly interpolated between the
    two evaluations bracketing the crossing; the first evaluation's rollouts if it already does; None if never."""
    _check(c)
    s = smooth(c.accuracy, window)
    if s[0] >= target:
        return float(c.rollouts[0])
    for i in range(1, len(s)):
        if s[i] >= target:
            r0, r1 = float(c.rollouts[i - 1]), float(c.rollouts[i])
            return r0 + (target - s[i - 1]) / (s[i] - s[i - 1]) * (r1 - r0)
    return None


def bootstrap(
    values: Mapping[int, float],
    *,
    n: int = 10000,
    level: float = 0.95,
    seed: int = 0,
    stat: Callable[[np.ndarray], float] = np.mean,
) -> tuple[float, float, float]:
    """Percentile bootstrap over seeds of a per-seed quantity: (stat of all values, low, high). Seeds are taken in
    sorted order and resampled with numpy.random.default_rng(seed), so the result is deterministic."""
    _check_level(level, n)
    if not values:
        raise ValueError("no values to bootstrap")
    x = np.array([float(values[k]) for k in sorted(values)])
    point = float(stat(x))
    if len(x) == 1:
        return point, point, point
    idx = np.random.default_rng(seed).integers(0, len(x), size=(n, len(x)))
    draws = x[idx].mean(axis=1) if stat is np.mean else np.array([float(stat(row)) for row in x[idx]])
    low, high = _quantiles(draws, level)
    return point, float(low), float(high)


def paired(
    a: Mapping[int, float | None],
    b: Mapping[int, float | None],
    *,
    kind: str = "diff",
    n: int = 10000,
    level: float = 0.95,
    seed: int = 0,
    missing: float | None = None,
) -> dict:
    """Paired bootstrap over the seeds both `a` and `b` have. kind "diff": the mean of per-seed a - b; kind "ratio":
    mean(a*) / mean(b*) over the same resampled seeds. A None (e.g. target never reached) is replaced by `missing`
    when given (counted in "replaced"), else its seed is dropped (counted in "dropped"); seeds in only one of `a`
    and `b` are counted in "unpaired". Raises ValueError if fewer than 2 seeds remain."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    _check_level(level, n)
    common = sorted(set(a) & set(b))
    unpaired = sorted(set(a) ^ set(b))
    used, xa, xb, replaced, dropped = [], [], [], 0, []
    for s in common:
        va, vb = a[s], b[s]
        if va is None or vb is None:
            if missing is None:
                dropped.append(s)
                continue
            replaced += (va is None) + (vb is None)
            va = missing if va is None else va
            vb = missing if vb is None else vb
        used.append(s)
        xa.append(float(va))
        xb.append(float(vb))
    if len(used) < 2:
        raise ValueError(f"paired {kind} needs >= 2 paired seeds, got {len(used)}: used {used}, dropped for None "
                         f"{dropped}, in only one side {unpaired}")  # fmt: skip
    xa_arr, xb_arr = np.array(xa), np.array(xb)
    idx = np.random.default_rng(seed).integers(0, len(used), size=(n, len(used)))
    if kind == "diff":
        d = xa_arr - xb_arr
        point, draws = float(d.mean()), d[idx].mean(axis=1)
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            point = float(xa_arr.mean() / xb_arr.mean()) if xb_arr.mean() != 0 else float("nan")
            draws = xa_arr[idx].mean(axis=1) / xb_arr[idx].mean(axis=1)
    low, high = _quantiles(draws, level)
    return {"point": point, "low": float(low), "high": float(high), "seeds": used, "n_seeds": len(used),
            "replaced": replaced, "dropped": len(dropped), "unpaired": len(unpaired), "kind": kind,
            "level": level}  # fmt: skip


def verdict(low: float, high: float, threshold: float, direction: str) -> str:
    """Whether the claim "value `direction` threshold" holds given the interval [low, high]: "holds", "does not" or
    "cannot tell" (the interval straddles the threshold)."""
    if direction == ">=":
        if low >= threshold:
            return "holds"
        return "does not" if high < threshold else "cannot tell"
    if direction == "<=":
        if high <= threshold:
            return "holds"
        return "does not" if low > threshold else "cannot tell"
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def band(
    curves: Sequence[Curve], grid: Sequence[float], *, n: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[list[float], list[float], list[float]]:
    """Per grid point, the mean over seeds of the interpolated accuracy and its percentile bootstrap band
    (mean, low, high); curves are resampled with replacement, with the same draws for every grid point."""
    _check_level(level, n)
    if not curves:
        raise ValueError("no curves")
    y = np.array([_at(c, grid) for c in curves])  # (seeds, grid)
    mean = y.mean(axis=0)
    idx = np.random.default_rng(seed).integers(0, len(curves), size=(n, len(curves)))
    low, high = _quantiles(y[idx].mean(axis=1), level)  # y[idx]: (n, seeds, grid)
    return [float(v) for v in mean], [float(v) for v in low], [float(v) for v in high]


def plot_bands(
    groups: Mapping[str, Sequence[Curve]], path: str | Path, *, title: str, budget: float | None = None
) -> None:
    """One figure of held-out accuracy vs rollouts: per group its mean curve with a shaded 95% bootstrap band, on
    the union of the group's rollouts (up to `budget` when given). Saves a PNG to `path`; raises
    ModuleNotFoundError if matplotlib is missing."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for name, curves in groups.items():
        grid = sorted({float(r) for c in curves for r in c.rollouts})
        if budget is not None:
            grid = sorted({*(r for r in grid if r <= budget), float(budget)})
        mean, low, high = band(curves, grid, level=0.95)
        (line,) = ax.plot(grid, mean, label=f"{name} (n={len(curves)})")
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2)
    if budget is not None:
        ax.set_xlim(0, budget)
    ax.set_xlabel("rollouts (responses generated)")
    ax.set_ylabel("held-out accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
