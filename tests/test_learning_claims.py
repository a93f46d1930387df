"""bench.learning_claims and bench.learning_study: the verdicts of the full comparison on hand-made runs, the study
file's runs, and reading a run folder."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import learning_claims as C
from bench import learning_study as S

SPEC = {
    "shared_lr": 5e-4, "sweep_lrs": [5e-4], "smooth_window": 1, "target_fraction": 0.9, "equal_accuracy": 0.02,
    "easy_levels": [1], "hard_levels": [2], "generation_shares": [0.7], "config": "chain", "overrides": [],
}  # fmt: skip
GRID = [0.0, 100.0, 200.0, 300.0, 400.0]


def _run(arm: str, seed: int, acc: list[float], *, length: float, levels: dict[str, float], update: float) -> dict:
    return {
        "arm": arm, "lr": 5e-4, "seed": seed,
        "curve": {"steps": [0, 1, 2, 3, 4], "rollouts": GRID, "wall_s": GRID, "accuracy": acc, "length": [length] * 5},
        "final_accuracy": acc[-1], "final_length": length,
        "levels": {k: {"accuracy": acc[-1], "length": v} for k, v in levels.items()},
        "phase_s": {"rollout": 0.1, "logprobs": 0.0, "update": update, "sync": 0.0, "step": 0.1 + update},
        "sfpo_switched_at": None, "seconds": 10.0, "load": [1.0, 2.0], "crashed_before": [],
    }  # fmt: skip


def _result() -> dict[str, Any]:
    runs = {}
    for seed in range(5):
        e = 0.01 * seed  # per-seed noise, shared by the arms (paired)
        runs[f"g{seed}"] = _run("grpo", seed, [0.5, 0.6 + e, 0.7, 0.8, 0.9], length=20.0,
                                levels={"1": 8.0, "2": 30.0}, update=0.1)  # fmt: skip
        runs[f"s{seed}"] = _run("sfpo", seed, [0.5, 0.9, 0.9, 0.9 + e, 0.9], length=20.0,
                                levels={"1": 8.0, "2": 30.0}, update=0.4)  # fmt: skip
        runs[f"p{seed}"] = _run("grpo_4pass", seed, [0.5, 0.9, 0.9, 0.9 + e, 0.9], length=20.0,
                                levels={"1": 8.0, "2": 30.0}, update=0.4)  # fmt: skip
        runs[f"f{seed}"] = _run("fast_grpo", seed, [0.5, 0.6 + e, 0.7, 0.8, 0.9], length=10.0 + e,
                                levels={"1": 4.0, "2": 29.0}, update=0.1)  # fmt: skip
    return {"spec": SPEC, "runs": runs, "arms": ["grpo", "sfpo", "grpo_4pass", "fast_grpo"], "seeds": list(range(5)),
            "budget": {"rollouts": 400, "steps": 4, "prompts_per_step": 10, "group_size": 10}}  # fmt: skip


def test_verdicts_follow_the_intervals() -> None:
    result = _result()
    a = C.analyse(result)
    assert a["target"]["target"] == pytest.approx(0.5 + 0.9 * (0.9 - 0.5))
    verdicts = {c["claim"].split(":")[0].split(" (")[0]: c["verdict"] for c in a["claims"]}
    # SFPO reaches 0.86 at ~91 rollouts, GRPO at ~360: ratio ~3.9 on every seed
    assert verdicts["SFPO reaches the target with >= 2x fewer rollouts than GRPO"] == "holds"
    assert verdicts["SFPO learns faster than GRPO"] == "holds"
    # SFPO equals GRPO with K+1 passes on every seed: a zero-width interval at 0 sits on the threshold
    reposition = next(c for c in a["claims"] if c["claim"].startswith("The reposition"))
    assert reposition["interval"]["point"] == pytest.approx(0.0)
    assert verdicts["FAST-GRPO's final length <= 0.7x GRPO's"] == "holds"  # ~0.51x
    assert verdicts["FAST-GRPO is shorter on easy levels [1]"] == "holds"  # 0.5x
    assert verdicts["FAST-GRPO keeps GRPO's accuracy on hard levels [2]"] == "holds"  # same accuracy
    model = a["step_model"]
    assert model["sfpo"]["train_ratio"] == pytest.approx(4.0)
    assert model["sfpo"]["step_ratio"]["0.7"] == pytest.approx(0.7 + 0.3 * 4.0)
    result["analysis"] = a
    result.update(study="t", device="cpu", cpus=2, jobs=1, date="d", seconds=60, source="chain",
                  frontier={"1": {"way": "direct", "accuracy": 1.0, "length": 4.0}})  # fmt: skip
    text = C.markdown(result)
    assert "**holds**" in text and "| 1 | direct | 1.00 | 4.0 |" in text


def test_a_claim_without_two_seeds_cannot_tell() -> None:
    result = _result()
    result["runs"] = {k: v for k, v in result["runs"].items() if v["seed"] == 0 or not k.startswith("s")}
    claim = next(c for c in C.analyse(result)["claims"] if c["claim"].startswith("SFPO learns"))
    assert claim["verdict"] == "cannot tell" and "needs >= 2 paired seeds" in claim["note"]


def test_study_file_expands_to_runs() -> None:
    study = S.load_study("full_cpu")
    s = study.spec
    sweep = [a for a, v in study.arms.items() if v.get("sweep")]
    controls = [a for a in study.arms if a not in sweep]
    assert len(study.seeds) >= 5 and set(controls) == {"sfpo_no_switch", "fast_grpo_no_filter"}
    assert len(study.runs) == len(study.seeds) * (len(sweep) * len(s["sweep_lrs"]) + len(controls))
    names = [r.name for r in study.runs]
    assert len(set(names)) == len(names) and "grpo-lr0.0002-seed100" in names
    four = next(r for r in study.runs if r.arm == "grpo_4pass")
    assert "optim.epochs=4" in four.overrides and "algorithm.update=grpo" in four.overrides
    gpu = S.load_study("full_gpu")
    assert gpu.arms.keys() == study.arms.keys() and gpu.spec["sweep_lrs"] == s["sweep_lrs"]
    with pytest.raises(SystemExit, match="unknown"):
        S.load_study("full_cpu", arms=["grpo", "dapo"])
    with pytest.raises(SystemExit, match="grpo"):
        S.load_study("full_cpu", arms=["sfpo"])


def test_read_run_takes_final_means_levels_and_phases(tmp_path: Path) -> None:
    rows = []
    for step in range(4):
        if step:
            rows.append({"step": step, "time/step": 1.0, "time/rollout": 0.2 * step, "time/update": 0.5, "sfpo": 1.0
                         if step < 3 else 0.0})  # fmt: skip
        rows.append({"step": step, "kind": "eval", "eval/chain/avg@1": 0.1 * step, "eval/chain/length": 10.0 + step,
                     "eval/chain/level_1/avg@1": 1.0, "eval/chain/level_1/length": 4.0 + step})  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = S.Run("sfpo", 5e-4, 1, ())
    record = {"seconds": 3.0, "load_before": 0.5, "load_after": 1.5}
    r = C.read_run(tmp_path, run, source="chain", prompts_per_step=2, group_size=2, final_evals=2, record=record)
    assert r["final_accuracy"] == pytest.approx(0.25) and r["final_length"] == pytest.approx(12.5)
    assert r["levels"]["1"] == {"accuracy": 1.0, "length": pytest.approx(6.5)}
    assert r["phase_s"]["rollout"] == pytest.approx(0.4) and r["phase_s"]["logprobs"] is None
    assert r["sfpo_switched_at"] == 3 and r["curve"]["rollouts"] == [0.0, 4.0, 8.0, 12.0]


def test_quick_study_and_ad_hoc_study() -> None:
    quick = S.load_study("quick")
    assert quick.seeds == [0, 1, 2] and len(quick.runs) == 12 and {r.lr for r in quick.runs} == {5e-4}
    adhoc = S.study_of("learning", {"shared_lr": 1e-6, "config": None}, [7, 8], ["grpo", "fast_grpo"])
    assert [r.name for r in adhoc.runs] == [
        "grpo-lr1e-06-seed7", "fast_grpo-lr1e-06-seed7", "grpo-lr1e-06-seed8", "fast_grpo-lr1e-06-seed8",
    ]  # fmt: skip
    assert "--config" not in S._command(adhoc, adhoc.runs[0], Path("r"))
    assert "algorithm.reward_shaping=thinking" in adhoc.runs[1].overrides and adhoc.spec["sweep_lrs"] == [1e-6]
