"""Training curves of a run as PNGs: `python -m trainer.plot RUN_DIR [--out DIR] [--keys KEY ...]`.

Reads `RUN_DIR/metrics.jsonl` (written by trainer.metrics) and writes one figure per metric plus `overview.png`
(all of them in a grid) to `RUN_DIR/plots` or `--out`. When a step was logged more than once (a resumed run), the
last line wins. Each curve is drawn raw and, when there are enough points, with a moving average over ~5% of the
run. Needs matplotlib; without it the command says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

# The curves worth a look in every run: reward, accuracy, response length, KL, entropy (the trainer's keys).
DEFAULT_KEYS = ("reward", "accuracy", "response_length", "actor/kl", "entropy")


def read_metrics(path: Path) -> list[dict]:
    """The records of a metrics.jsonl, one per step (the last line of a step wins), sorted by step.

    A truncated last line (a run killed mid-write) is skipped; any other malformed line is an error naming it.
    """
    lines = Path(path).read_text().splitlines()
    by_step: dict[int, dict] = {}
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if i == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i + 1}: not a JSON line ({err})") from err
        by_step[int(record["step"])] = record
    return [by_step[s] for s in sorted(by_step)]


def series(records: Sequence[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric, skipping steps where it is absent or null."""
    steps, values = [], []
    for r in records:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            steps.append(int(r["step"]))
            values.append(float(v))
    return steps, values


def _moving_average(values: list[float], window: int) -> list[float]:
    """Trailing mean over `window` values (fewer at the start), same length as `values`."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _draw(ax, steps: list[int], values: list[float], key: str) -> None:
    window = max(1, len(values) // 20)
    raw_alpha = 0.35 if window > 1 else 1.0
    ax.plot(steps, values, color="tab:blue", alpha=raw_alpha, linewidth=1, label="per step")
    if window > 1:
        ax.plot(steps, _moving_average(values, window), color="tab:blue", linewidth=2, label=f"mean of {window}")
        ax.legend(loc="best", fontsize="small")
    ax.set_title(key)
    ax.set_xlabel("step")
    ax.grid(True, alpha=0.3)


def plot_run(run_dir: Path, out_dir: Path | None = None, keys: Sequence[str] = DEFAULT_KEYS) -> list[Path]:
    """Writes `<key>.png` for each of `keys` present in the run (`/` becomes `_`) and `overview.png`; returns them.

    Raises ModuleNotFoundError without matplotlib, FileNotFoundError without metrics.jsonl, and ValueError if
    none of `keys` has a value.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "plots"
    records = read_metrics(run_dir / "metrics.jsonl")
    curves = {k: series(records, k) for k in keys}
    curves = {k: sv for k, sv in curves.items() if sv[0]}
    if not curves:
        raise ValueError(f"{run_dir / 'metrics.jsonl'}: none of {list(keys)} has a value")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, (steps, values) in curves.items():
        fig, ax = plt.subplots(figsize=(6, 4))
        _draw(ax, steps, values, key)
        fig.tight_layout()
        path = out_dir / f"{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)

    cols = min(3, len(curves))
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.5 * rows), squeeze=False)
    for ax, (key, (steps, values)) in zip(axes.flat, curves.items()):
        _draw(ax, steps, values, key)
    for ax in list(axes.flat)[len(curves) :]:
        ax.set_visible(False)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    path = out_dir / "overview.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.plot", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a run folder holding metrics.jsonl")
    parser.add_argument("--out", type=Path, default=None, help="where the PNGs go (default RUN_DIR/plots)")
    parser.add_argument("--keys", nargs="+", default=list(DEFAULT_KEYS), help="metrics to plot")
    args = parser.parse_args(argv)
    try:
        import matplotlib  # noqa: F401
    except ModuleNotFoundError:
        print("trainer.plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return 2
    try:
        written = plot_run(args.run_dir, args.out, args.keys)
    except (FileNotFoundError, ValueError) as err:
        print(f"trainer.plot: {err}", file=sys.stderr)
        return 1
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
