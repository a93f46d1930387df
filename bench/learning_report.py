"""The learning comparison's numbers from run folders: held-out accuracy by rollouts and wall-clock, the summary
JSON, its markdown table and its figure (`bench.learning` runs the trainer; this file only reads what it wrote).

Rollouts count the responses a run generated for training, filter refills included: per step
`rollout/chunks * rollout.prompts_per_step * rollout.group_size` (all ranks). Wall-clock is the sum of the steps'
`time/step` (the evaluations themselves are not counted). An evaluation row at step k sees the rollouts and seconds
of steps 1..k; the one before training sees 0.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainer.plot import read_metrics

__all__ = ["Curve", "curve", "first_reach", "markdown", "plot", "summarize", "targets"]


@dataclass(frozen=True)
class Curve:
    """One run's held-out curve, one entry per evaluation, in step order."""

    steps: list[int]
    rollouts: list[float]
    wall_s: list[float]
    accuracy: list[float]
    length: list[float | None]


def _avg_key(records: list[dict], source: str) -> str:
    prefix = f"eval/{source}/avg@"
    keys = sorted({k for r in records for k in r if k.startswith(prefix) and k.count("/") == 2})
    if not keys:
        raise ValueError(f"no eval/{source}/avg@n in the run's metrics (was eval on, with that source?)")
    return keys[0]


def curve(run_dir: Path, *, source: str, prompts_per_step: int, group_size: int) -> Curve:
    """The held-out curve of `run_dir` (its metrics.jsonl), for eval source `source`."""
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    key = _avg_key(records, source)
    steps, rollouts, wall, acc, length = [], [], [], [], []
    done_rollouts = done_wall = 0.0
    for rec in records:
        if "time/step" in rec:  # a training step: count it before this step's evaluation
            done_rollouts += float(rec.get("rollout/chunks", 1.0)) * prompts_per_step * group_size
            done_wall += float(rec["time/step"])
        if key in rec:
            steps.append(int(rec["step"]))
            rollouts.append(done_rollouts)
            wall.append(done_wall)
            acc.append(float(rec[key]))
            value = rec.get(f"eval/{source}/length")
            length.append(None if value is None else float(value))
    return Curve(steps, rollouts, wall, acc, length)


def first_reach(c: Curve, target: float) -> tuple[float | None, float | None]:
    """`(rollouts, seconds)` at the first evaluation whose accuracy is >= `target`; `(None, None)` if none is."""
    for r, w, a in zip(c.rollouts, c.wall_s, c.accuracy):
        if a >= target - 1e-12:
            return r, w
    return None, None


def summarize(curves: dict[str, dict[int, Curve]], seeds: Sequence[int]) -> dict[str, Any]:
    """The comparison's JSON body: per algorithm, one entry per seed (in `seeds` order).

    `*_to_grpo_best`: the first evaluation reaching GRPO's best held-out accuracy of the same seed (for grpo, its own
    best); None if never. Needs "grpo" among the algorithms.
    """
    if "grpo" not in curves:
        raise ValueError("the comparison needs grpo among the algorithms: its best accuracy is the target")
    out: dict[str, Any] = {}
    for name, by_seed in curves.items():
        entry: dict[str, list] = {
            k: []
            for k in (
                "rollouts_to_grpo_best", "wall_s_to_grpo_best", "best_eval_accuracy", "final_eval_accuracy",
                "mean_response_length", "total_rollouts",
            )
        }  # fmt: skip
        for seed in seeds:
            c = by_seed[seed]
            target = max(curves["grpo"][seed].accuracy)
            rollouts, wall = first_reach(c, target)
            entry["rollouts_to_grpo_best"].append(rollouts)
            entry["wall_s_to_grpo_best"].append(None if wall is None else round(wall, 3))
            entry["best_eval_accuracy"].append(max(c.accuracy))
            entry["final_eval_accuracy"].append(c.accuracy[-1])
            entry["mean_response_length"].append(c.length[-1])
            entry["total_rollouts"].append(c.rollouts[-1])
        out[name] = entry
    return out


def _median(values: Sequence[float | None]) -> float | None:
    """Median with None (never reached) counted as +inf; None if the median itself is never."""
    xs = [math.inf if v is None else float(v) for v in values]
    m = statistics.median(xs) if xs else math.inf
    return None if math.isinf(m) else m


def targets(algorithms: dict[str, Any]) -> list[dict[str, Any]]:
    """The papers' claims in miniature, each with its measured ratio or difference and whether it holds."""
    out = []
    g = algorithms["grpo"]
    g_roll = _median(g["rollouts_to_grpo_best"])
    if "sfpo" in algorithms and g_roll:
        s_roll = _median(algorithms["sfpo"]["rollouts_to_grpo_best"])
        ratio = None if s_roll is None else g_roll / s_roll
        out.append({
            "claim": "SFPO reaches GRPO's best with >= 2x fewer rollouts (median over seeds)",
            "measured": None if ratio is None else round(ratio, 3), "target": 2.0,
            "holds": ratio is not None and ratio >= 2.0,
        })  # fmt: skip
    if "fast_grpo" in algorithms:
        f = algorithms["fast_grpo"]
        g_len, f_len = _median(g["mean_response_length"]), _median(f["mean_response_length"])
        ratio = None if not g_len or f_len is None else f_len / g_len
        gap = _median(f["final_eval_accuracy"]) - _median(g["final_eval_accuracy"])  # type: ignore[operator]
        out.append({
            "claim": "FAST-GRPO's final response length <= 0.7x GRPO's (median over seeds)",
            "measured": None if ratio is None else round(ratio, 3), "target": 0.7,
            "holds": ratio is not None and ratio <= 0.7,
        })  # fmt: skip
        out.append({
            "claim": "FAST-GRPO's final held-out accuracy at most 0.02 below GRPO's (median over seeds)",
            "measured": round(gap, 4), "target": -0.02, "holds": gap >= -0.02,
        })  # fmt: skip
    return out


def _cell(values: Sequence[float | None], fmt: str) -> str:
    """`median [min, max]` over seeds; "never" for None."""
    show = lambda v: "never" if v is None else format(v, fmt)
    finite = [v for v in values if v is not None]
    if not finite:
        return "never"
    spread = f" [{show(min(finite))}, {show(max(finite)) if len(finite) == len(values) else 'never'}]"
    return show(_median(values)) + (spread if len(values) > 1 else "")


def markdown(result: dict[str, Any]) -> str:
    """The comparison as a markdown table (median [min, max] over seeds) and the targets."""
    rows = [
        f"Learning comparison on `{result['config']}`"
        + (f" with `{' '.join(result['overrides'])}`" if result.get("overrides") else "")
        + f" ({result['device']}, {result['date']}), seeds "
        f"{', '.join(map(str, result['seeds']))}; eval `{result['source']}` ({result['metric']}); "
        f"budget {result['budget']['steps']} steps x {result['budget']['prompts_per_step']} prompts x "
        f"{result['budget']['group_size']} responses = {result['budget']['rollouts']} rollouts before refills.",
        "",
        "| algorithm | rollouts to GRPO's best | seconds to GRPO's best | best held-out acc | final held-out acc "
        "| final response length (tokens) | rollouts generated |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, e in result["algorithms"].items():
        rows.append(
            f"| {name} | {_cell(e['rollouts_to_grpo_best'], '.0f')} | {_cell(e['wall_s_to_grpo_best'], '.1f')} "
            f"| {_cell(e['best_eval_accuracy'], '.3f')} | {_cell(e['final_eval_accuracy'], '.3f')} "
            f"| {_cell(e['mean_response_length'], '.2f')} | {_cell(e['total_rollouts'], '.0f')} |"
        )
    rows += ["", "| claim (the papers', in miniature) | measured | target | holds |", "|---|---:|---:|---|"]
    for t in result["targets"]:
        measured = "never" if t["measured"] is None else t["measured"]
        rows.append(f"| {t['claim']} | {measured} | {t['target']} | {'yes' if t['holds'] else 'no'} |")
    return "\n".join(rows) + "\n"


def plot(curves: dict[str, dict[int, Curve]], path: Path, *, title: str) -> Path:
    """Held-out accuracy vs rollouts and vs seconds, response length vs rollouts: the median over seeds per
    algorithm, seeds shaded (their min..max); evaluations are matched across seeds by index."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    panels = [("rollouts", "accuracy", "held-out accuracy"), ("wall_s", "accuracy", "held-out accuracy"),
              ("rollouts", "length", "response length (tokens)")]  # fmt: skip
    for ax, (x_name, y_name, y_label) in zip(axes, panels):
        for name, by_seed in curves.items():
            runs = list(by_seed.values())
            n = min(len(c.steps) for c in runs)
            xs = [statistics.median(getattr(c, x_name)[i] for c in runs) for i in range(n)]
            ys = [[getattr(c, y_name)[i] for c in runs] for i in range(n)]
            ys = [[v for v in col if v is not None] for col in ys]
            keep = [i for i in range(n) if ys[i]]
            med = [statistics.median(ys[i]) for i in keep]
            (line,) = ax.plot([xs[i] for i in keep], med, label=name)
            ax.fill_between([xs[i] for i in keep], [min(ys[i]) for i in keep], [max(ys[i]) for i in keep],
                            color=line.get_color(), alpha=0.2)  # fmt: skip
        ax.set_xlabel("rollouts (responses generated)" if x_name == "rollouts" else "seconds (training steps)")
        ax.set_ylabel(y_label)
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
