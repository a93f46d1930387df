"""The full learning comparison's analysis: per-run numbers from run folders, the papers' claims each judged from a
paired bootstrap interval over seeds ("holds / does not / cannot tell"), the learning-rate sweep, FAST's lengths per
level, a model of the step at the papers' generation share, the report and its figure.

What is measured, per run (`read_run`): the held-out curve (accuracy against rollouts, `bench.learning_report`);
its area over the rollout budget (`learning_stats.auc`, the mean held-out accuracy over the budget: the primary
metric); the rollouts at which its smoothed curve first reaches the target, 90% of the gain of the smoothed mean
GRPO curve at the shared learning rate (`learning_stats.target`, never one evaluation's maximum); the final accuracy
and length, each the mean of the last `final_evals` evaluations, also per level; the median seconds of each phase of
a step. A run that never reaches the target counts as reaching it at the end of the budget, and the report says how
many did so (this favours the arm that missed).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import learning_stats as st
from bench.learning_report import Curve, curve
from trainer.plot import read_metrics

__all__ = ["analyse", "markdown", "plot", "read_run"]

PHASES = ("rollout", "logprobs", "update", "sync", "step")


def _mean(xs: Sequence[float | None]) -> float | None:
    vals = [float(x) for x in xs if x is not None and math.isfinite(float(x))]
    return sum(vals) / len(vals) if vals else None


def read_run(run_dir: Path, run: Any, *, source: str, prompts_per_step: int, group_size: int, final_evals: int,
             record: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One run's numbers (see the module docstring)."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")
    c = curve(run_dir, source=source, prompts_per_step=prompts_per_step, group_size=group_size, records=rows)
    evals = [r for r in rows if f"eval/{source}/length" in r]
    tail = evals[-final_evals:]
    levels: dict[str, dict[str, float | None]] = {}
    prefix = f"eval/{source}/level_"
    for key in sorted({k for r in tail for k in r if k.startswith(prefix) and k.endswith("/length")}):
        level = key[len(prefix) : -len("/length")]
        acc_key = next((k for k in tail[-1] if k.startswith(f"{prefix}{level}/avg@")), None)
        levels[level] = {
            "accuracy": _mean([r.get(acc_key) for r in tail]) if acc_key else None,
            "length": _mean([r.get(key) for r in tail]),
        }
    steps = [r for r in rows if "time/step" in r]
    phases = {p: statistics.median(float(r[f"time/{p}"]) for r in steps if f"time/{p}" in r) if any(
        f"time/{p}" in r for r in steps) else None for p in PHASES}  # fmt: skip
    sfpo_keys = sorted({k for r in steps for k in r if k.endswith("sfpo")})
    switched = None
    if sfpo_keys:
        was_on = [r for r in steps if r.get(sfpo_keys[0]) is not None]
        switched = next((int(r["step"]) for r in was_on if float(r[sfpo_keys[0]]) < 0.5), None)
    return {
        "arm": run.arm,
        "lr": run.lr,
        "seed": run.seed,
        "curve": c.__dict__,
        "final_accuracy": _mean(c.accuracy[-final_evals:]),
        "final_length": _mean(c.length[-final_evals:]),
        "levels": levels,
        "phase_s": phases,
        "sfpo_switched_at": switched,
        "seconds": record["seconds"],
        "load": [record["load_before"], record["load_after"]],
        "crashed_before": record.get("crashed_before", []),
    }


def _by(runs: dict[str, dict[str, Any]], arm: str, lr: float) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in runs.values() if r["arm"] == arm and math.isclose(r["lr"], lr)}


def _levels_mean(r: dict[str, Any], levels: Sequence[int], what: str) -> float | None:
    return _mean([r["levels"].get(str(lv), {}).get(what) for lv in levels])


def _interval(kind: str, a: dict[int, float | None], b: dict[int, float | None], **kw: Any) -> dict[str, Any] | None:
    try:
        return st.paired(a, b, kind=kind, **kw)
    except ValueError as err:
        return {"error": str(err)}


def _claim(text: str, ci: dict[str, Any] | None, threshold: float, direction: str, note: str = "") -> dict[str, Any]:
    if ci is None or "error" in ci or any(not math.isfinite(ci[k]) for k in ("point", "low", "high")):
        return {"claim": text, "interval": ci, "threshold": threshold, "direction": direction,
                "verdict": "cannot tell", "note": (ci or {}).get("error", "no interval")}  # fmt: skip
    verdict = st.verdict(ci["low"], ci["high"], threshold, direction)
    return {"claim": text, "interval": ci, "threshold": threshold, "direction": direction, "verdict": verdict,
            "note": note}  # fmt: skip


def analyse(result: dict[str, Any]) -> dict[str, Any]:
    """Targets, per-run AUC and rollouts to target, the arm table, the claims, the sweep, FAST per level and the
    step model, from `result["runs"]` and the study spec."""
    s, runs = result["spec"], result["runs"]
    shared, budget = float(s["shared_lr"]), float(result["budget"]["rollouts"])
    window, margin = int(s.get("smooth_window", 3)), float(s.get("equal_accuracy", 0.02))
    grpo = _by(runs, "grpo", shared)
    tgt = st.target([Curve(**r["curve"]) for r in grpo.values()], float(s.get("target_fraction", 0.9)), window)
    for r in runs.values():
        c = Curve(**r["curve"])
        r["auc"] = st.auc(c, budget)
        r["rollouts_to_target"] = st.rollouts_to(c, tgt["target"], window)
    lrs = sorted({r["lr"] for r in runs.values()})
    table = {}
    for arm in result["arms"]:
        for lr in lrs:
            group = _by(runs, arm, lr)
            if not group:
                continue
            entry: dict[str, Any] = {"arm": arm, "lr": lr, "seeds": len(group)}
            for key in ("auc", "final_accuracy", "final_length"):
                vals = {k: v[key] for k, v in group.items() if v[key] is not None}
                entry[key] = st.bootstrap(vals) if vals else None
            reach = [v["rollouts_to_target"] for v in group.values()]
            entry["reached"] = sum(x is not None for x in reach)
            entry["rollouts_to_target"] = _mean([budget if x is None else x for x in reach])
            for p in PHASES:
                entry[f"{p}_s"] = _mean([v["phase_s"].get(p) for v in group.values()])
            entry["seconds"] = _mean([v["seconds"] for v in group.values()])
            entry["switched_at"] = [v["sfpo_switched_at"] for v in group.values()]
            table[f"{arm}@{lr:g}"] = entry

    def per_seed(arm: str, key: str, lr: float = shared) -> dict[int, float | None]:
        return {seed: r[key] for seed, r in _by(runs, arm, lr).items()}

    def levels(arm: str, lv: Sequence[int], what: str) -> dict[int, float | None]:
        return {seed: _levels_mean(r, lv, what) for seed, r in _by(runs, arm, shared).items()}

    out_claims = []
    arms = set(result["arms"])
    miss = {"missing": budget}
    if "sfpo" in arms:
        out_claims.append(_claim(
            "SFPO reaches the target with >= 2x fewer rollouts than GRPO (ratio GRPO / SFPO)",
            _interval("ratio", per_seed("grpo", "rollouts_to_target"), per_seed("sfpo", "rollouts_to_target"), **miss),
            2.0, ">=", "a run that never reaches the target counts at the budget"))  # fmt: skip
        out_claims.append(
            _claim(
                "SFPO learns faster than GRPO: mean held-out accuracy over the budget (SFPO - GRPO)",
                _interval("diff", per_seed("sfpo", "auc"), per_seed("grpo", "auc")),
                0.0,
                ">=",
            )
        )
    if {"sfpo", "grpo_4pass"} <= arms:
        out_claims.append(_claim(
            "The reposition adds to data reuse: SFPO - GRPO with K+1 passes per batch (mean accuracy over the budget)",
            _interval("diff", per_seed("sfpo", "auc"), per_seed("grpo_4pass", "auc")), 0.0, ">="))  # fmt: skip
        out_claims.append(_claim(
            "Data reuse alone: GRPO with K+1 passes - GRPO (mean accuracy over the budget)",
            _interval("diff", per_seed("grpo_4pass", "auc"), per_seed("grpo", "auc")), 0.0, ">="))  # fmt: skip
    if {"sfpo", "sfpo_no_switch"} <= arms:
        out_claims.append(_claim(
            "The entropy switch costs nothing: SFPO - SFPO without the switch (mean accuracy over the budget)",
            _interval("diff", per_seed("sfpo", "auc"), per_seed("sfpo_no_switch", "auc")), 0.0, ">="))  # fmt: skip
    easy, hard = [int(x) for x in s.get("easy_levels", [1])], [int(x) for x in s.get("hard_levels", [])]
    for fast in ("fast_grpo", "fast_sfpo"):
        if fast not in arms:
            continue
        base = "grpo" if fast == "fast_grpo" else "sfpo"
        if base not in arms:
            continue
        name = "FAST-GRPO" if fast == "fast_grpo" else "FAST+SFPO"
        out_claims.append(
            _claim(
                f"{name}'s final length <= 0.7x {base.upper()}'s (ratio)",
                _interval("ratio", per_seed(fast, "final_length"), per_seed(base, "final_length")),
                0.7,
                "<=",
            )
        )
        out_claims.append(
            _claim(
                f"{name} keeps {base.upper()}'s accuracy: final accuracy difference >= -{margin}",
                _interval("diff", per_seed(fast, "final_accuracy"), per_seed(base, "final_accuracy")),
                -margin,
                ">=",
            )
        )
        out_claims.append(
            _claim(
                f"{name} is shorter on easy levels {easy}: length ratio <= 0.7",
                _interval("ratio", levels(fast, easy, "length"), levels(base, easy, "length")),
                0.7,
                "<=",
            )
        )
        if hard:
            out_claims.append(
                _claim(
                    f"{name} keeps {base.upper()}'s accuracy on hard levels {hard}: difference >= -{margin}",
                    _interval("diff", levels(fast, hard, "accuracy"), levels(base, hard, "accuracy")),
                    -margin,
                    ">=",
                )
            )
        out_claims.append(
            _claim(
                f"{name} keeps {base.upper()}'s accuracy on easy levels {easy}: difference >= -{margin}",
                _interval("diff", levels(fast, easy, "accuracy"), levels(base, easy, "accuracy")),
                -margin,
                ">=",
            )
        )
    if {"fast_grpo", "fast_grpo_no_filter"} <= arms:
        out_claims.append(_claim(
            "The Slow2Fast filter shortens: FAST-GRPO / FAST-GRPO without the filter, final length ratio <= 1",
            _interval("ratio", per_seed("fast_grpo", "final_length"), per_seed("fast_grpo_no_filter", "final_length")),
            1.0, "<="))  # fmt: skip
        out_claims.append(_claim(
            "The Slow2Fast filter keeps accuracy: FAST-GRPO - without the filter, final accuracy >= -" + str(margin),
            _interval("diff", per_seed("fast_grpo", "final_accuracy"),
                      per_seed("fast_grpo_no_filter", "final_accuracy")), -margin, ">="))  # fmt: skip
    best = {}
    for arm in result["arms"]:
        options = {lr: table[f"{arm}@{lr:g}"]["auc"][0] for lr in lrs if f"{arm}@{lr:g}" in table}
        if len(options) > 1:
            best[arm] = max(options, key=lambda lr: options[lr])
    if {"sfpo", "grpo_4pass"} <= best.keys():
        out_claims.append(_claim(
            f"The reposition at each one's best lr: SFPO ({best['sfpo']:g}) - GRPO with K+1 passes "
            f"({best['grpo_4pass']:g}), mean accuracy over the budget",
            _interval("diff", per_seed("sfpo", "auc", best["sfpo"]), per_seed("grpo_4pass", "auc", best["grpo_4pass"])),
            0.0, ">=", "each lr picked on these same seeds"))  # fmt: skip
    if "grpo" in best:
        for arm in ("sfpo", "grpo_4pass", "fast_grpo", "fast_sfpo"):
            if arm in best:
                out_claims.append(_claim(
                    f"{arm} at its best lr ({best[arm]:g}) - GRPO at its best ({best['grpo']:g}): mean accuracy "
                    "over the budget",
                    _interval("diff", per_seed(arm, "auc", best[arm]), per_seed("grpo", "auc", best["grpo"])),
                    0.0, ">=", "each lr picked on these same seeds: optimistic for every arm alike"))  # fmt: skip
    per_level = {}
    if "fast_grpo" in arms:
        all_levels = sorted({int(k) for r in runs.values() for k in r["levels"]})
        for lv in all_levels:
            g, f = levels("grpo", [lv], "length"), levels("fast_grpo", [lv], "length")
            ga, fa = levels("grpo", [lv], "accuracy"), levels("fast_grpo", [lv], "accuracy")
            per_level[lv] = {"grpo_length": _mean(list(g.values())), "fast_length": _mean(list(f.values())),
                             "grpo_accuracy": _mean(list(ga.values())), "fast_accuracy": _mean(list(fa.values())),
                             "ratio": _interval("ratio", f, g, n=2000)}  # fmt: skip
    return {"target": tgt, "table": table, "claims": out_claims, "best_lr": best, "fast_per_level": per_level,
            "step_model": _step_model(table, shared, [float(g) for g in s.get("generation_shares", [0.7])],
                                      {c["claim"]: c for c in out_claims})}  # fmt: skip


def _step_model(table: dict[str, Any], shared: float, shares: list[float], found: dict[str, Any]) -> dict[str, Any]:
    """Each arm's step time relative to GRPO's if generation took `share` of a GRPO step (the papers' regime):
    generation scaled by the arm's measured rollout-time ratio, the rest by its measured (update + log-prob) ratio.
    With SFPO's rollouts-to-target ratio, the wall-clock speed-up it implies."""
    g = table.get(f"grpo@{shared:g}")
    if not g or not g["update_s"] or not g["rollout_s"]:
        return {}
    base_train = g["update_s"] + (g["logprobs_s"] or 0.0)
    out = {}
    for key, e in table.items():
        if not key.endswith(f"@{shared:g}") or not e["update_s"] or not e["rollout_s"]:
            continue
        gen = e["rollout_s"] / g["rollout_s"]
        train = (e["update_s"] + (e["logprobs_s"] or 0.0)) / base_train
        out[key.split("@")[0]] = {
            "measured_rollout_share": g["rollout_s"] / g["step_s"] if key.startswith("grpo@") else None,
            "rollout_ratio": gen,
            "train_ratio": train,
            "step_ratio": {f"{sh:g}": sh * gen + (1 - sh) * train for sh in shares},
        }
    claim = next((c for k, c in found.items() if k.startswith("SFPO reaches")), None)
    if claim and "sfpo" in out and claim["interval"] and "point" in claim["interval"]:
        ratio = claim["interval"]["point"]
        out["sfpo"]["wall_speedup"] = {k: ratio / v for k, v in out["sfpo"]["step_ratio"].items()}
    return out


def _ci(x: Any, fmt: str = ".3f") -> str:
    if not x:
        return "-"
    if isinstance(x, dict):
        if "error" in x:
            return "n/a"
        p, lo, hi = x["point"], x["low"], x["high"]
    else:
        p, lo, hi = x
    return f"{p:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]"


def markdown(result: dict[str, Any]) -> str:
    """The study's report."""
    a, s, b = result["analysis"], result["spec"], result["budget"]
    loads = [ld for r in result["runs"].values() for ld in r["load"]]
    lines = [
        f"# Learning comparison: study `{result['study']}` ({s.get('description', '')})",
        "",
        f"{result['device']}, {result['cpus']} CPUs, {result['jobs']} runs at once, {result['date']}; "
        f"{len(result['runs'])} runs of {sum(r['seconds'] for r in result['runs'].values()) / 60:.0f} minutes in all "
        f"({'their sum; this invocation read finished runs and took ' if result.get('resumed') else 'their sum; '}"
        f"{result['seconds'] / 60:.0f} minutes of wall-clock); 1-minute load during the runs "
        f"{min(loads):.1f}-{max(loads):.1f}. Config `{s['config']}` with `{' '.join(s.get('overrides', []))}`; "
        f"seeds {', '.join(map(str, result['seeds']))} (fixed in the study file before any result); budget "
        f"{b['steps']} steps x {b['prompts_per_step']} prompts x {b['group_size']} responses = {b['rollouts']} "
        f"rollouts; held-out `{result['source']}` ({result.get('eval_prompts', '?')} prompts) every "
        f"{result.get('eval_every', '?')} steps.",
        "",
        f"Target: {a['target']['fraction']:.0%} of the smoothed mean GRPO curve's gain (lr {s['shared_lr']:g}): "
        f"{a['target']['start']:.3f} -> plateau {a['target']['plateau']:.3f}, target {a['target']['target']:.3f}. "
        "Intervals: 95% paired bootstrap over seeds. A verdict comes from the interval, not the point.",
        "",
        "## Claims",
        "",
        "| claim | measured [95% CI] | threshold | verdict |",
        "| --- | ---: | ---: | --- |",
    ]
    for c in a["claims"]:
        note = f" ({c['note']})" if c.get("note") else ""
        replaced = (c["interval"] or {}).get("replaced")
        if replaced:
            note += f" ({replaced} never reached)"
        lines.append(f"| {c['claim']}{note} | {_ci(c['interval'])} | {c['direction']} {c['threshold']:g} "
                     f"| **{c['verdict']}** |")  # fmt: skip
    lines += [
        "",
        f"## Arms (mean [95% CI] over {len(result['seeds'])} seeds)",
        "",
        "| arm | lr | mean acc over budget | final acc | final length | rollouts to target (reached) | "
        "rollout s/step | update s/step | s/run |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in a["table"].values():
        best = " (best)" if a["best_lr"].get(e["arm"]) == e["lr"] else ""
        rt = "-" if e["rollouts_to_target"] is None else f"{e['rollouts_to_target']:.0f}"
        lines.append(
            f"| {e['arm']} | {e['lr']:g}{best} | {_ci(e['auc'])} | {_ci(e['final_accuracy'])} | "
            f"{_ci(e['final_length'], '.1f')} | {rt} ({e['reached']}/{e['seeds']}) | {e['rollout_s'] or 0:.3f} | "
            f"{(e['update_s'] or 0) + (e['logprobs_s'] or 0):.3f} | {e['seconds']:.0f} |"
        )
    if a["fast_per_level"]:
        lines += ["", "## FAST-GRPO against GRPO, per level (final, mean over seeds)", "",
                  "| level | GRPO acc | FAST acc | GRPO length | FAST length | FAST / GRPO length [95% CI] |",
                  "| ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for lv, e in a["fast_per_level"].items():
            f = lambda v, fmt=".2f": "-" if v is None else format(v, fmt)
            lines.append(f"| {lv} | {f(e['grpo_accuracy'])} | {f(e['fast_accuracy'])} | {f(e['grpo_length'], '.1f')} "
                         f"| {f(e['fast_length'], '.1f')} | {_ci(e['ratio'], '.2f')} |")  # fmt: skip
    lines += [
        "",
        "## The warm start's frontier (what a length reward can reach per level)",
        "",
        "| level | shortest way within 0.02 of the best | accuracy | length |",
        "| ---: | --- | ---: | ---: |",
    ]
    for lv, f in result["frontier"].items():
        lines.append(f"| {lv} | {f['way']} | {f['accuracy']:.2f} | {f['length']:.1f} |")
    if a["step_model"]:
        shares = [float(x) for x in s.get("generation_shares", [0.7])]
        lines += ["", "## Wall-clock: measured phases, and the step at the papers' generation share", "",
                  "Seconds are medians per step on this machine (the load is above); the model scales generation "
                  "and training by each arm's measured ratio to GRPO.", "",
                  "| arm | rollout time / GRPO's | train time / GRPO's | "
                  + " | ".join(f"step / GRPO's at {sh:.0%} generation" for sh in shares) + " |",
                  "| --- | ---: | ---: |" + " ---: |" * len(shares)]  # fmt: skip
        for arm, m in a["step_model"].items():
            cells = " | ".join(f"{m['step_ratio'][f'{sh:g}']:.2f}" for sh in shares)
            lines.append(f"| {arm} | {m['rollout_ratio']:.2f} | {m['train_ratio']:.2f} | {cells} |")
        g = a["step_model"].get("grpo", {})
        if g.get("measured_rollout_share") is not None:
            lines.append(f"\nGeneration is {g['measured_rollout_share']:.0%} of a GRPO step here.")
        sp = a["step_model"].get("sfpo", {}).get("wall_speedup")
        if sp:
            lines.append(
                "SFPO's rollouts-to-target ratio over its modeled step ratio (wall-clock to target): "
                + ", ".join(f"{float(k):.0%} generation: {v:.2f}x" for k, v in sp.items())
                + "."
            )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Held-out accuracy against rollouts, mean over seeds with a 95% bootstrap band, for every arm at the shared
    learning rate."""
    shared = float(result["spec"]["shared_lr"])
    groups = {arm: [Curve(**r["curve"]) for r in _by(result["runs"], arm, shared).values()] for arm in result["arms"]}
    st.plot_bands(
        {k: v for k, v in groups.items() if v},
        path,
        budget=float(result["budget"]["rollouts"]),
        title=f"{result['study']}: held-out accuracy, lr {shared:g}, seeds {result['seeds']}",
    )
