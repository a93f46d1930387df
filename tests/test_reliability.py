"""Nothing silently wrong: a run folder is never clobbered by a fresh run, a diverged update is never saved as good,
nonsense answers stop at load time, and a wild lr is flagged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer import data
from trainer.config import load_config
from trainer.model.tiny import build_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def _launch(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    from test_trainer_run import SMALL

    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m", "trainer.main",
        f"logging.run_dir={run_dir}", *SMALL, "optim.total_steps=2", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.distributed
@pytest.mark.slow
def test_a_fresh_run_into_a_used_folder_is_refused_then_replaced_on_request(tmp_path: Path) -> None:
    first = _launch(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    again = _launch(tmp_path, "optim.lr=0.001")
    assert again.returncode != 0
    lines = [line for line in again.stderr.splitlines() if line.startswith("config error:")]
    assert len(lines) == 1 and "logging.run_dir" in lines[0] and "holds a run" in lines[0]
    assert "--resume auto" in lines[0] and "logging.overwrite=true" in lines[0]
    assert "trainer/trainer.py" not in again.stderr  # no traceback from the worker (torchrun adds its own report)
    assert "exitcode  : 2" in again.stderr
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing touched

    replaced = _launch(tmp_path, "logging.overwrite=true")
    assert replaced.returncode == 0, replaced.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2]  # the old run's rows are gone, not appended to


@pytest.mark.parametrize(("answer", "shown"), [("NaN", "nan"), ('""', "''"), ('"  "', "'  '"), ("null", "None")])
def test_nonsense_answers_stop_at_load_naming_file_and_row(tmp_path: Path, answer: str, shown: str) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "1 + 1 =", "answer": "2"}\n' + f'{{"prompt": "2 + 2 =", "answer": {answer}}}\n')
    cfg = load_config([f"data.source={path}"]).data
    with pytest.raises(ValueError, match="answer") as err:
        data.load_prompts(cfg, build_tokenizer())
    assert str(path) in str(err.value) and "2" in str(err.value) and shown in str(err.value)


def test_a_wild_learning_rate_is_flagged(capsys: pytest.CaptureFixture[str]) -> None:
    load_config(["optim.lr=1e6"])
    assert "warning: optim.lr = 1e+06 is far outside the usual range" in capsys.readouterr().err
    load_config(["optim.lr=1e-6"])
    assert capsys.readouterr().err == ""


@pytest.mark.distributed
@pytest.mark.slow
def test_a_diverged_update_stops_the_run_before_it_is_saved(tmp_path: Path) -> None:
    from test_trainer_run import SHORT_WARM_START  # a reward signal, hence a gradient, from the first step

    warm = (*SHORT_WARM_START, f"warm_start.cache={tmp_path.parent / 'warm'}")
    out = _launch(tmp_path, "optim.lr=1e30", "optim.grad_clip=0", "checkpoint.every=1", "optim.total_steps=3", *warm)
    assert "exitcode  : 3" in out.stderr, out.stderr[-3000:]
    line = next(line for line in out.stderr.splitlines() if line.startswith("stopping:"))
    assert "the update diverged at step" in line and "optim.max_param_abs" in line and "nothing saved" in line
    assert "warning: optim.lr = 1e+30" in out.stderr
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    # The first update with a gradient diverges (an all-wrong batch has none: its step moves nothing).
    bad = rows[-1]["step"]
    assert rows[-1]["actor/diverged"] == 1.0 and rows[-1]["actor/param_abs_max"] > 1e4
    assert all(r["actor/diverged"] == 0.0 and r["actor/param_abs_max"] < 1e4 for r in rows[:-1])
    saved = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "checkpoints").glob("step_*"))
    assert all(s < bad for s in saved)  # the diverged weights were never checkpointed
    assert (f"last good checkpoint: {tmp_path}/checkpoints/step_{saved[-1]:08d}" if saved
            else "no checkpoint was written before them") in line  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda sd: {f"policy.{k}": v for k, v in sd.items()}, "unexpected keys (policy.model.embed_tokens.weight"),
        (lambda sd: {k: v for k, v in sd.items() if ".layers.1." not in k}, "missing keys (model.layers.1."),
    ],
    ids=["prefixed", "a layer removed"],
)
def test_weights_that_do_not_fit_the_model_stop_the_load(tmp_path: Path, edit, expected: str) -> None:
    from _tiny import tiny_lm
    from safetensors.torch import load_file, save_file

    from trainer.model.load import load_model_and_tokenizer

    folder = tmp_path / "model"
    tiny_lm().save_pretrained(folder)
    build_tokenizer().save_pretrained(folder)
    cfg = load_config([f"model.path={folder}", "warm_start.mode=off"]).model
    load_model_and_tokenizer(cfg)  # as saved: loads
    weights = folder / "model.safetensors"
    save_file(edit(load_file(weights)), weights, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="do not fit its model") as err:
        load_model_and_tokenizer(cfg)
    assert str(folder) in str(err.value) and expected in str(err.value)
