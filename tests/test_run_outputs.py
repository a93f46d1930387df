"""What a run leaves besides metrics.jsonl: the wandb rows (a stand-in wandb), the live progress line on a terminal,
and the plots/ folder drawn when the run ends (matplotlib optional, a failure never fatal)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import io
import json
import sys
from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config
from trainer.metrics import MetricsLogger
from trainer.progress import Progress, format_duration
from trainer.wandb_log import wandb_row

FAKE_WANDB = Path(__file__).resolve().parent / "_fake_wandb"
ROW = {"reward": 0.5, "accuracy": 0.25, "response_length": 12.0, "actor/kl": 0.001, "time/step": 0.5}
EVAL = {"eval/synthetic/avg@4": 0.6, "eval/synthetic/pass@4": 0.9, "eval/synthetic/length": 5.0}


@pytest.fixture
def fake_wandb(monkeypatch: pytest.MonkeyPatch):
    """tests/_fake_wandb's `wandb`, imported as `wandb` for this test (the config check finds it too)."""
    spec = importlib.util.spec_from_file_location("wandb", FAKE_WANDB / "wandb" / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.__spec__ = importlib.machinery.ModuleSpec("wandb", spec.loader)
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("FAKE_WANDB_LOG", raising=False)
    return module


def test_wandb_gets_the_jsonl_rows(tmp_path: Path, fake_wandb) -> None:
    """Every metrics.jsonl row, training and evaluation, at its step, with the same numbers; config and mode too."""
    cfg = load_config(
        [f"logging.run_dir={tmp_path}", "logging.wandb=true", "logging.wandb_mode=offline", "logging.plots=false"]
    )
    logger = MetricsLogger.from_config(tmp_path, cfg, rank=0)
    logger.stream = logger.progress.stream = io.StringIO()
    logger.log_eval(0, EVAL)
    logger.log(1, ROW)
    logger.log(2, {**ROW, "reward": float("nan"), "rollout/dry": True})
    logger.log_eval(2, EVAL)
    logger.close()
    calls = fake_wandb.CALLS
    assert [c["call"] for c in calls] == ["init", "log", "log", "log", "log", "finish"]
    init = calls[0]
    assert (init["project"], init["name"], init["mode"], init["dir"]) == (
        "fastslow",
        tmp_path.name,
        "offline",
        str(tmp_path),
    )
    assert init["config"] == cfg.to_dict()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = [{k: v for k, v in r.items() if k not in ("step", "time", "kind") and v is not None} for r in rows]
    assert [c["data"] for c in calls[1:-1]] == expected and [c["step"] for c in calls[1:-1]] == [0, 1, 2, 2]
    assert "reward" not in calls[3]["data"] and calls[3]["data"]["rollout/dry"] == 1  # NaN left out, as null
    assert wandb_row({"step": 3, "kind": "eval", "x": 1.5, "note": "text"}) == {"x": 1.5}
    other = MetricsLogger.from_config(tmp_path / "r1", cfg, rank=1)  # rank 1 never starts a wandb run
    other.log(1, ROW)
    other.close()
    assert len(fake_wandb.CALLS) == 6


def test_wandb_asked_for_but_missing_is_one_line_exit_2(tmp_path, monkeypatch, capsys) -> None:
    """Checked with the config, before the process group or any model: one line, exit status 2."""
    from trainer.main import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails, find_spec finds nothing
    with pytest.raises(ConfigError, match=r"logging\.wandb = True: wandb is not installed: pip install"):
        load_config(["logging.wandb=true"])
    assert load_config(["logging.wandb=false"]).logging.wandb is False  # not asked for: no check
    assert main([f"logging.run_dir={tmp_path / 'run'}", "logging.wandb=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "wandb is not installed" in err[0] and "logging.wandb" in err[0]
    assert not (tmp_path / "run").exists()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_progress_line_on_a_terminal(tmp_path: Path) -> None:
    """One line rewritten in place (step/total, rate, time left, the metrics); other lines end it first."""
    clock = iter([100.0, 102.0, 104.0])
    term = _Terminal()
    with MetricsLogger(tmp_path, rank=0, console_every=5, tensorboard=False, total_steps=10, stream=term) as logger:
        logger.progress.clock = lambda: next(clock)
        logger.log(1, ROW)  # no rate yet from the clock: 1 / time/step
        logger.log(2, ROW)  # 1 step in 2 s
        logger.log_eval(2, EVAL)
        logger.log(3, ROW)
    empty, first, second, third = term.getvalue().split("\r")
    second, eval_line, rest = second.split("\n")
    assert empty == "" and rest == "" and third.endswith("\x1b[K\n")  # close() ends the live line
    assert first.startswith("step 1/10 (10%) | 2.00 step/s | left 0:00:04 | reward 0.500 | acc 0.250")
    assert first.endswith("\x1b[K") and "\n" not in first  # each step rewrites the line, whatever console_every
    assert second.startswith("step 2/10 (20%) | 0.50 step/s | left 0:00:16 | reward 0.500")
    assert eval_line.startswith("eval step 2 | synthetic avg@4 0.600")  # on a line of its own
    assert third.startswith("step 3/10 (30%) | 0.50 step/s | left 0:00:14")
    assert format_duration(3723.4) == "1:02:03" and format_duration(-1) == "0:00:00"
    plain = io.StringIO()
    progress = Progress(total_steps=10, every=2, stream=plain)
    for step in (1, 2, 3):
        progress.step(step, f"step {step}/10 | reward 0.5", {})
    assert plain.getvalue() == "step 1/10 | reward 0.5\nstep 2/10 | reward 0.5\n"  # off a terminal: as before
    quiet = Progress(total_steps=10, every=0, stream=_Terminal())
    quiet.step(1, "step 1/10", {})
    assert quiet.stream.getvalue() == ""


def test_plots_drawn_when_the_run_ends(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = io.StringIO()
    with MetricsLogger(tmp_path, rank=0, console_every=0, tensorboard=False, stream=out, plots=True) as logger:
        for step in (1, 2, 3):
            logger.log(step, {"reward": 0.1 * step})
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["overview.png", "reward.png"]
    assert out.getvalue() == ""  # drawn quietly
    other = MetricsLogger(tmp_path / "r1", rank=1, tensorboard=False, plots=True)  # rank 1 draws nothing
    other.log(1, ROW)
    other.close()
    assert not (tmp_path / "r1").exists()
    with MetricsLogger(tmp_path / "r2", rank=0, tensorboard=False, stream=out, plots=True):
        pass  # ended before its first step: nothing to draw, nothing said
    assert not (tmp_path / "r2" / "plots").exists() and out.getvalue() == ""


def test_plots_never_fail_a_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No matplotlib, or a plot that raises: one line each, and close() returns."""
    out = io.StringIO()
    with MetricsLogger(tmp_path / "a", rank=0, console_every=0, tensorboard=False, stream=out, plots=True) as logger:
        logger.log(1, {"custom": 1.0})  # none of the curves plot_run draws
    assert out.getvalue().startswith("plots: not drawn (ValueError: ") and "python -m trainer.plot" in out.getvalue()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    out = io.StringIO()
    with MetricsLogger(tmp_path / "b", rank=0, console_every=0, tensorboard=False, stream=out, plots=True) as logger:
        logger.log(1, ROW)
    assert (
        out.getvalue()
        == "plots: not drawn, matplotlib is not installed (pip install matplotlib; or logging.plots = false)\n"
    )
    assert not (tmp_path / "b" / "plots").exists()


def test_real_wandb_offline_keeps_its_files_in_the_run_folder(tmp_path: Path, monkeypatch) -> None:
    """With wandb installed (`pip install .[wandb]`): an offline run needs no network and writes under run_dir/wandb."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = load_config(
        [f"logging.run_dir={tmp_path}", "logging.wandb=true", "logging.wandb_mode=offline", "logging.plots=false"]
    )
    logger = MetricsLogger.from_config(tmp_path, cfg, rank=0)
    logger.stream = logger.progress.stream = io.StringIO()
    logger.log_eval(0, EVAL)
    logger.log(1, {**ROW, "reward": float("nan")})
    logger.close()
    (run,) = (tmp_path / "wandb").glob("offline-run-*")
    assert list(run.glob("*.wandb")) and (tmp_path / "metrics.jsonl").exists()
