"""Training and evaluation curves as PNGs: `python -m trainer.plot RUN_DIR [RUN_DIR ...] [--out DIR] [--keys KEY ...]`.

One run: reads `RUN_DIR/metrics.jsonl` (written by trainer.metrics) and writes one figure per metric plus
`overview.png` (all of them in a grid) to `RUN_DIR/plots` or `--out`. Several runs: the same figures with one line
per run, labelled by the run folder's name (`--labels` to rename), to `--out` (default: `compare/` beside the first
run); `overlay(run_dirs, out_dir, labels=None)` is the same for other modules (a learning benchmark).

The metrics drawn by default are the training curves (reward, accuracy, response length, KL, entropy) and, for each
evaluation source in the file, `eval/<source>/avg@n`, `maj@n`, the largest `pass@k` and `length`. A step's
evaluation row and its training row are merged into one record; when a step was logged more than once (a resumed
run), its last row of each kind wins. Training curves are drawn raw and, when there are enough points, with a moving
average over ~5% of the run; evaluation curves (a few points) with markers. Needs matplotlib; without it the command
says so and exits with status 2. A training run draws its own `plots/` when it ends (`logging.plots`,
`plot_finished_run`: never an error there).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The curves worth a look in every run: reward, accuracy, response length, KL, entropy (the trainer's keys).
DEFAULT_KEYS = ("reward", "accuracy", "response_length", "actor/kl", "entropy")
_MARKERS_BELOW = 30
"""Curves with fewer points than this (evaluations) get markers."""


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl, one per step, sorted by step.

    A step's training row and evaluation row (`"kind": "eval"`) are merged into one record; of several rows of the
    same step and kind (a resumed run), the last wins. A truncated last line (a run killed mid-write) is skipped;
    any other malformed line is an error naming it.
    """
    lines = Path(path).read_text().splitlines()
    by_step: dict[int, dict[str, dict]] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line ({err})") from err
        by_step.setdefault(int(record["step"]), {})[str(record.get("kind", "train"))] = record
    out = []
    for step in sorted(by_step):
        merged: dict[str, Any] = {}
        for kind in sorted(by_step[step], key=lambda k: k != "train"):  # the training row first: its time wins
            for key, value in by_step[step][kind].items():
                if key != "time" or "time" not in merged:
                    merged[key] = value
        merged.pop("kind", None)
        out.append(merged)
    return out


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, skipping steps where it is absent or null."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def eval_keys(records: Sequence[dict]) -> list[str]:
    """The evaluation metrics drawn by default: per source, avg@n, maj@n, the largest pass@k and length."""
    by_source: dict[str, set[str]] = {}  # insertion order: the sources in the order they first appear
    for r in records:
        for key in r:
            parts = key.split("/")
            if len(parts) == 3 and parts[0] == "eval":
                by_source.setdefault(parts[1], set()).add(parts[2])
    out = []
    for source, names in by_source.items():
        passes = sorted((k for k in names if k.startswith("pass@")), key=lambda k: int(k[5:]))
        wanted = sorted(k for k in names if k.startswith("avg@")) + sorted(k for k in names if k.startswith("maj@"))
        out += [f"eval/{source}/{k}" for k in [*wanted, *passes[-1:], "length"] if k in names]
    return out


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` values (fewer at the start), same length as `values`."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _line(ax, steps: list[int], values: list[float], *, color: str, label: str | None) -> None:
    """One curve: markers for a few points; raw and smoothed for many."""
    window = max(1, len(values) // 20)
    marker = "o" if len(values) < _MARKERS_BELOW else None
    if window == 1:
        ax.plot(steps, values, color=color, linewidth=1.5, marker=marker, markersize=4, label=label)
        return
    ax.plot(steps, values, color=color, alpha=0.3, linewidth=1)
    ax.plot(steps, _moving_average(values, window), color=color, linewidth=2, label=label)


def _draw(ax, steps: list[int], values: list[float], key: str) -> None:
    window = max(1, len(values) // 20)
    raw_alpha = 0.35 if window > 1 else 1.0
    marker = "o" if len(values) < _MARKERS_BELOW and window == 1 else None
    ax.plot(steps, values, color="tab:blue", alpha=raw_alpha, linewidth=1, marker=marker, label="per step")
    if window > 1:
        ax.plot(steps, _moving_average(values, window), color="tab:blue", linewidth=2, label=f"mean of {window}")
        ax.legend(loc="best", fontsize="small")
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _figures(plt: Any, out_dir: Path, title: str, curves: dict[str, Any], draw: Any) -> list[Path]:
    """`<key>.png` per curve (`/` becomes `_`) and `overview.png` with all of them; `draw(ax, key, curve)`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, curve in curves.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        draw(ax, key, curve)
        fig.tight_layout()
        path = out_dir / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, (key, curve) in zip(axes.flat, curves.items()):
        draw(ax, key, curve)
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    path = out_dir / "overview.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def plot_run(run_dir: Path, out_dir: Path | None = None, keys: Sequence[str] | None = None) -> list[Path]:
    """Writes `<key>.png` for each of `keys` present in the run (`/` becomes `_`) and `overview.png`; returns them.

    `keys` None: `DEFAULT_KEYS` and the run's evaluation curves (`eval_keys`). Raises ModuleNotFoundError without
    matplotlib, FileNotFoundError without metrics.jsonl, and ValueError if none of `keys` has a value.
    """
    plt = _pyplot()
    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    records = read_metrics(run_dir / "metrics.jsonl")
    keys = list(keys) if keys is not None else [*DEFAULT_KEYS, *eval_keys(records)]
    curves = {k: series(records, k) for k in keys}
    curves = {k: sv for k, sv in curves.items() if sv[0]}
    if not curves:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: none of {list(keys)} has a value")
    return _figures(plt, out_dir, run_dir.name, curves, lambda ax, key, sv: _draw(ax, sv[0], sv[1], key))


def plot_finished_run(run_dir: Path) -> str | None:
    """`plot_run(run_dir)` at the end of a training run: None when it drew, else the one line to print instead.

    Without matplotlib, or when the figures fail for any reason (no metrics yet, a full disk, a matplotlib bug),
    the line says so and the run ends as it would have: its results are in metrics.jsonl whatever happens here.
    """
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return "plots: not drawn, matplotlib is not installed (pip install matplotlib; or logging.plots = false)"
    try:
        plot_run(run_dir)
    except Exception as err:  # a finished run never fails on its plots
        return f"plots: not drawn ({type(err).__name__}: {err}); python -m trainer.plot {run_dir} draws them later"
    return None


def overlay(
    run_dirs: Sequence[Path],
    out_dir: Path,
    labels: Sequence[str] | None = None,
    keys: Sequence[str] | None = None,
) -> list[Path]:
    """Several runs in the same figures, one line per run: `<key>.png` per metric and `overview.png`; returns them.

    Args:
        run_dirs: run folders holding metrics.jsonl.
        out_dir: where the PNGs go.
        labels: one legend label per run (default: the run folders' names).
        keys: metrics to draw (default: `DEFAULT_KEYS` and every run's evaluation curves); a metric is drawn when
            at least one run has it.

    Raises ModuleNotFoundError without matplotlib, FileNotFoundError for a run without metrics.jsonl, ValueError
    for a label count that does not match or when no run has any of `keys`.
    """
    plt = _pyplot()
    run_dirs = [Path(r) for r in run_dirs]
    labels = [r.name for r in run_dirs] if labels is None else list(labels)
    if len(labels) != len(run_dirs):
        raise ValueError(f"overlay: {len(labels)} labels for {len(run_dirs)} runs")
    runs = [read_metrics(r / "metrics.jsonl") for r in run_dirs]
    if keys is None:
        keys = list(DEFAULT_KEYS) + [k for rec in runs for k in eval_keys(rec)]
    keys = list(dict.fromkeys(keys))
    curves = {k: [series(rec, k) for rec in runs] for k in keys}
    curves = {k: per_run for k, per_run in curves.items() if any(steps for steps, _ in per_run)}
    if not curves:
        raise ValueError(f"none of {keys} has a value in any of {[str(r) for r in run_dirs]}")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]

    def draw(ax, key: str, per_run: list[tuple[list[int], list[float]]]) -> None:
        for i, ((steps, values), label) in enumerate(zip(per_run, labels)):
            if steps:
                _line(ax, steps, values, color=colors[i % len(colors)], label=label)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small")

    return _figures(plt, Path(out_dir), " vs ".join(labels), curves, draw)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.plot", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("run_dirs", type=Path, nargs="+", help="run folders holding metrics.jsonl (several: overlaid)")
    parser.add_argument("--out", type=Path, default=None, help="where the PNGs go (default RUN_DIR/plots; several "
                        "runs: compare/ beside the first)")  # fmt: skip
    parser.add_argument("--keys", nargs="+", default=None, help="metrics to plot (default: training and eval curves)")
    parser.add_argument("--labels", nargs="+", default=None, help="legend labels of the runs (default: folder names)")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        print("trainer.plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    try:
        if len(args.run_dirs) == 1 and args.labels is None:
            written = plot_run(args.run_dirs[0], args.out, args.keys)
        else:
            out = args.out if args.out is not None else args.run_dirs[0].parent / "compare"
            written = overlay(args.run_dirs, out, labels=args.labels, keys=args.keys)
    except (FileNotFoundError, ValueError) as err:
        print(f"trainer.plot: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
