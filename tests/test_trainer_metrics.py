"""trainer.metrics and trainer.plot: JSONL on rank 0 only, value conversion, console line, TensorBoard optional,
system metrics on CPU, PNG curves from a metrics file."""

from __future__ import annotations

import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from trainer.metrics import METRICS_FILE, MetricsLogger, system_metrics, to_number
from trainer.plot import main as plot_main
from trainer.plot import plot_run, read_metrics

STEP_METRICS = {
    "reward": 0.5,
    "accuracy": 0.25,
    "response_length": 12.0,
    "actor/kl": 0.001,
    "entropy": 1.2345,
    "tokens_per_s": 1000.4,
    "time/step": 0.5,
}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_jsonl_written_on_rank_0_only(tmp_path: Path) -> None:
    other = MetricsLogger(tmp_path / "r1", rank=1, console_every=1, tensorboard=False, stream=io.StringIO())
    other.log(1, {"reward": 1.0})
    other.summary(["done"])
    other.close()
    assert not (tmp_path / "r1").exists()

    out = io.StringIO()
    with MetricsLogger(tmp_path, rank=0, console_every=0, tensorboard=False, stream=out) as logger:
        logger.log(
            1,
            {
                "reward": torch.tensor(0.5),
                "accuracy": np.float32(0.25),
                "kept": torch.tensor(3),
                "sfpo": True,
                "loss": float("nan"),
                "phase": "rollout",
            },
        )
        logger.log(2, {"reward": 0.75})
    (first, second) = _lines(tmp_path / METRICS_FILE)
    assert first["step"] == 1 and isinstance(first["time"], float)
    assert first["reward"] == 0.5 and first["accuracy"] == 0.25
    assert first["kept"] == 3 and isinstance(first["kept"], int)
    assert first["sfpo"] == 1 and first["loss"] is None and first["phase"] == "rollout"
    assert second == {"step": 2, "time": second["time"], "reward": 0.75}
    assert out.getvalue() == ""  # console_every=0: no progress lines


def test_resumed_logger_appends(tmp_path: Path) -> None:
    for step in (1, 2):
        with MetricsLogger(tmp_path, rank=0, tensorboard=False, stream=io.StringIO()) as logger:
            logger.log(step, {"reward": float(step)})
    assert [r["step"] for r in _lines(tmp_path / METRICS_FILE)] == [1, 2]


def test_bad_values_name_the_key() -> None:
    with pytest.raises(TypeError, match=r"'vec'.*shape"):
        to_number("vec", torch.zeros(2))
    with pytest.raises(TypeError, match=r"'obj'.*not a number"):
        to_number("obj", object())
    assert to_number("inf", math.inf) is None


def test_console_line(tmp_path: Path) -> None:
    out = io.StringIO()
    with MetricsLogger(tmp_path, rank=0, console_every=2, tensorboard=False, total_steps=10, stream=out) as logger:
        for step in (1, 2, 3, 4):
            logger.log(step, STEP_METRICS)
        logger.log(5, {"reward": 1.0, "mem/cpu_rss_gb": 0.5})
    lines = out.getvalue().splitlines()
    # Step 1 always (the first sign of life), then every 2nd step; fields absent from a step are left out.
    expect = "reward 0.500 | acc 0.250 | len 12.0 | kl 0.0010 | ent 1.234 | tok/s 1000 | s/step 0.50"
    assert lines == [f"step 1/10 | {expect}", f"step 2/10 | {expect}", f"step 4/10 | {expect}"]
    no_total = MetricsLogger(tmp_path / "b", rank=0, tensorboard=False, stream=io.StringIO())
    assert no_total.format_line(7, {"reward": float("nan"), "kl": 0.5}) == "step 7 | reward nan | kl 0.5000"
    no_total.close()


def test_summary_printed_and_saved(tmp_path: Path) -> None:
    out = io.StringIO()
    with MetricsLogger(tmp_path, rank=0, tensorboard=False, stream=out) as logger:
        logger.summary(["run folder: x", "accuracy: 0.1 -> 0.9"])
    assert out.getvalue() == "run folder: x\naccuracy: 0.1 -> 0.9\n"
    assert (tmp_path / "summary.txt").read_text() == "run folder: x\naccuracy: 0.1 -> 0.9\n"


def test_tensorboard_skipped_when_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # makes the import fail, as if absent
    out = io.StringIO()
    with MetricsLogger(tmp_path, rank=0, tensorboard=True, stream=out) as logger:
        logger.log(1, {"reward": 0.5})
    assert "tensorboard is not installed" in out.getvalue()
    assert not (tmp_path / "tensorboard").exists()
    assert len(_lines(tmp_path / METRICS_FILE)) == 1


def test_tensorboard_written_when_installed(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path, rank=0, tensorboard=True, stream=io.StringIO()) as logger:
        logger.log(1, STEP_METRICS)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_system_metrics_on_cpu() -> None:
    m = system_metrics(torch.device("cpu"))
    assert set(m) == {"mem/cpu_rss_gb", "mem/cpu_peak_rss_gb"}
    assert 0 < m["mem/cpu_rss_gb"] <= m["mem/cpu_peak_rss_gb"] * 1.01  # now <= peak (statm vs rusage rounding)
    assert all(isinstance(v, float) for v in m.values())


# -------------------------------------------------------------------------------------------------------- plot
def _write_run(run_dir: Path, steps: int = 60) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = []
    for s in range(1, steps + 1):
        acc = min(1.0, s / steps + 0.1 * rng.standard_normal())
        lines.append(json.dumps({"step": s, "time": 1e9 + s, **STEP_METRICS, "accuracy": acc, "reward": acc}))
    lines.append(json.dumps({"step": 3, "time": 2e9, "accuracy": 0.99, "reward": None}))  # a resumed run's repeat
    lines.append('{"step": 61, "rew')  # killed mid-write
    (run_dir / METRICS_FILE).write_text("\n".join(lines))


def test_read_metrics_last_line_of_a_step_wins(tmp_path: Path) -> None:
    _write_run(tmp_path)
    records = read_metrics(tmp_path / METRICS_FILE)
    assert [r["step"] for r in records] == list(range(1, 61))
    assert records[2]["accuracy"] == 0.99 and records[2]["reward"] is None
    (tmp_path / "bad.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:2"):
        read_metrics(tmp_path / "bad.jsonl")


def test_plot_writes_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    _write_run(tmp_path / "run")
    written = plot_run(tmp_path / "run")
    names = sorted(p.name for p in written)
    assert names == sorted(
        ["reward.png", "accuracy.png", "response_length.png", "actor_kl.png", "entropy.png", "overview.png"]
    )
    for path in written:
        assert path.parent == tmp_path / "run" / "plots"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert plot_main([str(tmp_path / "run"), "--out", str(tmp_path / "out"), "--keys", "accuracy"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["accuracy.png", "overview.png"]
    assert plot_main([str(tmp_path / "missing")]) == 1
    assert "metrics.jsonl" in capsys.readouterr().err
    assert plot_main([str(tmp_path / "run"), "--keys", "nothing"]) == 1


def test_plot_without_matplotlib_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_run(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot_main([str(tmp_path)]) == 2
    assert "pip install matplotlib" in capsys.readouterr().err
