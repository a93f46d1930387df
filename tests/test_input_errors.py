"""Every bad input: one line on stderr naming it, exit status 2, before the models are built, and nothing changed.

Table-driven over the config, the data file, the evaluation sets, the model folder, the reward function, the resume
target and the run folder. Each case runs `trainer.main.main` in this process (a group of one, gloo); one more runs
under torchrun, where the line must come from rank 0 only and `FASTSLOW_ERROR_FILE` (what `make run` prints last)
holds it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from trainer.main import main

ROOT = Path(__file__).resolve().parents[1]
QUICK = [
    "optim.total_steps=1", "rollout.prompts_per_step=2", "rollout.group_size=2", "rollout.max_new_tokens=4",
    "logging.tensorboard=false", "checkpoint.export_hf=false", "eval.enabled=false", "warm_start.mode=off",
    "logging.plots=false",
]  # fmt: skip
DIST_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(autouse=True)
def _group_of_one():
    """Each `main()` makes (and closes) its own group of one, on a fresh port."""
    saved = {k: os.environ.pop(k) for k in DIST_ENV if k in os.environ}
    yield
    for k in DIST_ENV:
        os.environ.pop(k, None)
    os.environ.update(saved)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The inputs the cases point at: good and broken model folders, data files, a reward module, a finished run."""
    from trainer.config import load_config
    from trainer.model import load as M

    root = tmp_path_factory.mktemp("inputs")
    good = root / "model"
    lm, tok = M.load_model_and_tokenizer(load_config([]).model, seed=0)
    lm.save_pretrained(good)
    tok.save_pretrained(good)
    out: dict[str, Path] = {"root": root, "model": good}
    for name, change in {
        "no_config": lambda d: (d / "config.json").unlink(),
        "no_weights": lambda d: (d / "model.safetensors").unlink(),
        "prefixed": lambda d: save_file(
            {f"policy.{k}": v for k, v in load_file(d / "model.safetensors").items()}, d / "model.safetensors"
        ),
        "bad_tokenizer": lambda d: (d / "tokenizer.json").write_text("{ not json"),
    }.items():
        folder = root / name
        subprocess.run(["cp", "-r", str(good), str(folder)], check=True)
        change(folder)
        out[name] = folder
    import transformers

    for name, model in {  # not the decoder-only layout, or not a causal LM at all
        "gpt2": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2)),
        "t5": lambda: transformers.T5ForConditionalGeneration(
            transformers.T5Config(num_layers=1, d_model=32, num_heads=2, d_ff=64, vocab_size=64)
        ),
        "bert": lambda: transformers.BertForMaskedLM(
            transformers.BertConfig(
                num_hidden_layers=1, hidden_size=32, num_attention_heads=2, intermediate_size=64, vocab_size=64
            )
        ),
    }.items():
        model().save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    for name, edit in {
        "unknown_arch": lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"qwen2"', '"nosuchmodel"')
        ),
        "bad_template": lambda d: (d / "tokenizer_config.json").write_text(
            json.dumps({**json.loads((d / "tokenizer_config.json").read_text()), "chat_template": "{% for x in %}"})
        ),
    }.items():
        subprocess.run(["cp", "-r", str(good), str(root / name)], check=True)
        edit(root / name)
        out[name] = root / name
    (root / "exits.py").write_text("import sys\nsys.exit(3)\n")
    rows = {
        "nested": '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + ', "answer": "1"}\n',
        "surrogate": '{"prompt": "1 + \\ud800 =", "answer": "1"}\n',
        "huge_int": '{"prompt": "1 + 1 =", "answer": ' + "9" * 5000 + "}\n",
        "one_row": '{"prompt": "1 + 1 =", "answer": "2"}\n',
        "empty": "",
        "bad_json": '{"prompt": "1 + 1 =", "answer": "2"}\n{"prompt": oops}\n',
        "no_answer": '{"prompt": "1 + 1 =", "solution": "2"}\n',
        "nan_answer": '{"prompt": "1 + 1 =", "answer": NaN}\n',
        # words outside the built-in vocabulary are dropped: a prompt of only such words is no tokens at all
        "no_tokens": '{"prompt": "1 + 1 =", "answer": "2"}\n{"prompt": "hello world", "answer": "2"}\n',
        "all_long": '{"prompt": "1 + 1 + 1 =", "answer": "3"}\n{"prompt": "2 + 2 + 2 =", "answer": "6"}\n',
        "all_far_too_long": "".join('{"prompt": "' + "1 + " * 200 + '1 =", "answer": "201"}\n' for _ in range(3)),
    }
    for name, text in rows.items():
        (root / f"{name}.jsonl").write_text(text)
        out[name] = root / f"{name}.jsonl"
    (root / "bad.toml").write_text("[optim\nlr = 1\n")
    (root / "rewards.py").write_text("NOT_A_FUNCTION = 3\n")
    (root / "a_file").write_text("x")
    out["a_file"] = root / "a_file"
    run = root / "run"
    assert main([f"logging.run_dir={run}", *QUICK]) == 0
    out["run"] = run
    for k in DIST_ENV:
        os.environ.pop(k, None)
    for name, victim in (("cut_shard", "__0_0.distcp"), ("cut_state", "trainer_state.pt")):  # damaged copies
        folder = root / name
        subprocess.run(["cp", "-r", str(run), str(folder)], check=True)
        _cut(folder / "checkpoints" / "step_00000001" / victim)
        out[name] = folder
    for name in ("zeroed_shard", "zeroed_shard_no_sums"):  # bytes changed in place: the size is kept
        folder = root / name
        subprocess.run(["cp", "-r", str(run), str(folder)], check=True)
        shard = folder / "checkpoints" / "step_00000001" / "__0_0.distcp"
        shard.write_bytes(bytes(shard.stat().st_size))
        if name == "zeroed_shard_no_sums":  # as a checkpoint written before checksums: only DCP's load can tell
            (shard.parent / "checksums.json").unlink()
        out[name] = folder
    if importlib.util.find_spec("pyarrow") is not None:
        out["corrupt_parquet"] = _corrupt_parquet(root / "corrupt.parquet")
    return out


def _corrupt_parquet(path: Path) -> Path:
    """8 rows in 2 row groups; the second group's prompt column zeroed in place (a bad disk block mid-file): the
    footer and the first group still read, the damaged page header does not (pyarrow: "Couldn't deserialize
    thrift")."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": f"{i % 9} + 1 =", "answer": str(i % 9 + 1)} for i in range(8)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + chunk.total_compressed_size] = bytes(chunk.total_compressed_size)
    path.write_bytes(bytes(data))
    return path


def _cut(path: Path) -> None:
    """Keeps the first half of a file, as a full disk or an interrupted copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# name: (arguments, the run folder to use ("fresh" | "run" | a key of `files`), what the line must name)
CASES: dict[str, tuple[Callable[[dict[str, Path]], list[str]], str, str]] = {
    # config
    "unknown_key": (lambda f: ["optim.lrr=1e-4"], "fresh", "optim.lrr"),
    "bad_type": (lambda f: ["optim.lr=fast"], "fresh", "optim.lr"),
    "out_of_range": (lambda f: ["rollout.group_size=1"], "fresh", "rollout.group_size"),
    "missing_config_file": (lambda f: ["--config", str(f["root"] / "nope.toml")], "fresh", "nope.toml"),
    "bad_toml": (lambda f: ["--config", str(f["root"] / "bad.toml")], "fresh", "bad.toml"),
    "bad_choice": (lambda f: ["rollout.on_filter_exhausted=later"], "fresh", "rollout.on_filter_exhausted"),
    "negative_timeout": (lambda f: ["reward.timeout_s=-1"], "fresh", "reward.timeout_s"),
    "process_group_timeout": (lambda f: ["parallel.timeout_s=1e15"], "fresh", "parallel.timeout_s"),
    "process_group_timeout_tiny": (lambda f: ["parallel.timeout_s=1e-7"], "fresh", "parallel.timeout_s"),
    "tiny_temperature": (lambda f: ["rollout.temperature=1e-30"], "fresh", "rollout.temperature"),
    "reward_exits_at_import": (lambda f: [f"reward.function={f['root'] / 'exits.py'}:fn"], "fresh", "SystemExit"),
    # reward function
    "reward_missing_module": (lambda f: ["reward.function=no_such_module_xyz:fn"], "fresh", "reward.function"),
    "reward_not_a_function": (
        lambda f: [f"reward.function={f['root'] / 'rewards.py'}:NOT_A_FUNCTION"],
        "fresh",
        "NOT_A_FUNCTION",
    ),
    "reward_missing_file": (lambda f: [f"reward.function={f['root'] / 'nope.py'}:fn"], "fresh", "nope.py"),
    # data
    "data_missing": (lambda f: [f"data.source={f['root'] / 'nope.jsonl'}"], "fresh", "nope.jsonl"),
    "data_folder": (lambda f: [f"data.source={f['root']}"], "fresh", "data.source"),
    "data_empty": (lambda f: [f"data.source={f['empty']}"], "fresh", "empty.jsonl"),
    "data_bad_json": (lambda f: [f"data.source={f['bad_json']}"], "fresh", "bad_json.jsonl"),
    "data_no_answer": (lambda f: [f"data.source={f['no_answer']}"], "fresh", "'answer'"),
    "data_nan_answer": (lambda f: [f"data.source={f['nan_answer']}"], "fresh", "nan_answer.jsonl"),
    "data_nested": (lambda f: [f"data.source={f['nested']}"], "fresh", "line 1: not valid JSON: nested too deeply"),
    "data_surrogate": (lambda f: [f"data.source={f['surrogate']}"], "fresh", "line 1: data.prompt_key='prompt' holds"),
    "data_huge_int": (lambda f: [f"data.source={f['huge_int']}"], "fresh", "line 1: not valid JSON: a number of"),
    "data_fewer_than_a_step": (lambda f: [f"data.source={f['one_row']}"], "fresh", "rollout.prompts_per_step = 2"),
    "data_no_tokens": (
        lambda f: [f"data.source={f['no_tokens']}"],
        "fresh",
        "no_tokens.jsonl: line 2: the prompt encodes to no tokens",
    ),
    "data_corrupt_parquet": (
        lambda f: [f"data.source={f['corrupt_parquet']}"],
        "fresh",
        "corrupt.parquet: row group 1 (rows 4-7) does not read",
    ),
    # every prompt too long: the error alone, without a "skipped N prompts" line before it
    "data_all_too_long": (
        lambda f: [f"data.source={f['all_long']}", "data.max_prompt_tokens=4"],
        "fresh",
        "all_long.jsonl holds no prompts (all 2 were longer than data.max_prompt_tokens=4)",
    ),
    "data_all_far_too_long": (
        lambda f: [f"data.source={f['all_far_too_long']}", "data.max_prompt_tokens=4"],
        "fresh",
        "all_far_too_long.jsonl holds no prompts (all 3 were longer than data.max_prompt_tokens=4)",
    ),
    "eval_missing": (
        lambda f: ["eval.enabled=true", f"eval.source={f['root'] / 'nope.jsonl'}"],
        "fresh",
        "eval.source",
    ),
    # model folder
    "model_missing": (lambda f: [f"model.path={f['root'] / 'nope'}"], "fresh", "model.path"),
    "model_no_config": (lambda f: [f"model.path={f['no_config']}"], "fresh", "config.json"),
    "model_no_weights": (lambda f: [f"model.path={f['no_weights']}"], "fresh", "weights"),
    "model_misfit": (lambda f: [f"model.path={f['prefixed']}"], "fresh", "prefixed"),
    "model_bad_tokenizer": (lambda f: [f"model.path={f['bad_tokenizer']}"], "fresh", "tokenizer"),
    "model_gpt2": (lambda f: [f"model.path={f['gpt2']}"], "fresh", "a GPT2LMHeadModel (model_type 'gpt2')"),
    "model_t5": (lambda f: [f"model.path={f['t5']}"], "fresh", "holds a 't5' model (T5Config), which is not"),
    "model_bert": (lambda f: [f"model.path={f['bert']}"], "fresh", "bert"),
    "model_unknown_arch": (lambda f: [f"model.path={f['unknown_arch']}"], "fresh", "`nosuchmodel`"),
    "model_bad_chat_template": (
        lambda f: [
            f"model.path={f['bad_template']}",
            f"data.source={f['one_row']}",
            "data.apply_chat_template=true",
            "rollout.prompts_per_step=1",
        ],
        "fresh",
        "its chat template does not render",
    ),
    # resume target
    "resume_missing": (lambda f: ["--resume", str(f["root"] / "nope")], "fresh", "--resume"),
    "resume_not_a_checkpoint": (lambda f: ["--resume", str(f["root"])], "fresh", "not a complete checkpoint"),
    "resume_changed_shape": (lambda f: ["--resume", "auto", "model.hidden_size=32"], "run", "model.hidden_size"),
    "resume_changed_algorithm": (lambda f: ["--resume", "auto", "algorithm.update=sfpo"], "run", "algorithm.update"),
    "resume_changed_step_size": (
        lambda f: ["--resume", "auto", "rollout.prompts_per_step=4"],
        "run",
        "rollout.prompts_per_step = 2 -> 4",
    ),
    "resume_cut_shard": (
        lambda f: ["--resume", str(f["cut_shard"] / "checkpoints" / "step_00000001")],
        "cut_shard",
        "step_00000001/__0_0.distcp is cut short",
    ),
    "resume_cut_state": (
        lambda f: ["--resume", str(f["cut_state"] / "checkpoints" / "step_00000001")],
        "cut_state",
        "step_00000001/trainer_state.pt does not load",
    ),
    "resume_auto_all_damaged": (lambda f: ["--resume", "auto"], "cut_shard", "none of the 1 checkpoints"),
    "resume_zeroed_shard": (
        lambda f: [f"checkpoint.resume={f['zeroed_shard'] / 'checkpoints' / 'step_00000001'}"],
        "zeroed_shard",
        "step_00000001/__0_0.distcp does not match its checksum",
    ),
    # no checksums.json: the size check passes, and the models are built before DCP's load finds the damage
    "checkpoint_zeroed_shard_no_sums": (
        lambda f: [f"checkpoint.resume={f['zeroed_shard_no_sums'] / 'checkpoints' / 'step_00000001'}"],
        "zeroed_shard_no_sums",
        "step_00000001",
    ),
    # run folder
    "run_folder_holds_a_run": (lambda f: ["optim.lr=1e-4"], "run", "holds a run"),
    "run_folder_is_a_file": (lambda f: [], "a_file", "is a file"),
    "run_folder_under_a_file": (lambda f: [], "under_a_file", "cannot create"),
}


def _printed_by_a_real_run(record: logging.LogRecord) -> bool:
    """Whether a run prints this record on stderr: the trainer configures no logging, so logging's last resort
    prints a WARNING or worse whose logger has no handler of its own on the way to the root (torch's DCP logger has a
    NullHandler: silent). Under pytest the records go to its capture instead, off stderr."""
    logger = logging.getLogger(record.name)
    while logger.parent is not None:
        if logger.handlers:
            return False
        if not logger.propagate:
            break
        logger = logger.parent
    return record.levelno >= logging.lastResort.level


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} if folder.exists() else {}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_input_is_one_line_and_exit_2(
    case: str, files: dict[str, Path], tmp_path: Path, capfd, caplog, monkeypatch: pytest.MonkeyPatch
) -> None:
    args, where, named = CASES[case]
    if case == "data_corrupt_parquet":
        pytest.importorskip("pyarrow")
    if case.startswith(("data_", "eval_", "resume_", "run_folder_")):  # found before any model is built

        def no_model(*args, **kwargs):
            raise AssertionError("the model was built before the bad input was found")

        monkeypatch.setattr("trainer.trainer.build_models", no_model)
    run_dir = {"fresh": tmp_path / "fresh", "under_a_file": files["a_file"] / "sub"}.get(where) or files[where]
    before = _snapshot(run_dir) if run_dir.is_dir() else None
    capfd.readouterr()
    assert main([f"logging.run_dir={run_dir}", *QUICK, *args(files)]) == 2
    err = capfd.readouterr().err
    logged = [r.getMessage() for r in caplog.records if _printed_by_a_real_run(r)]
    lines = logged + [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith(("config error: ", "error: ")) and named in lines[0], lines[0]
    if where == "fresh":
        assert not run_dir.exists()  # a failed start leaves no folder behind
    elif before is not None:
        assert _snapshot(run_dir) == before  # an existing run is untouched (config.toml included)


def test_a_resume_with_changes_that_may_change_lists_them(files: dict[str, Path], tmp_path: Path, capfd) -> None:
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(files["run"]), str(run)], check=True)
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK, "--resume", "auto", "optim.total_steps=2", "optim.lr=1e-4"]) == 0
    out = capfd.readouterr().out
    assert "resume: changed since the saved config: optim.lr 0.0005 -> 0.0001, optim.total_steps 1 -> 2" in out
    saved = (run / "config.toml").read_text()
    assert "total_steps = 2" in saved and "lr = 0.0001" in saved  # the run's config.toml is now this start's
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_auto_resume_skips_a_damaged_checkpoint_for_the_previous_one(
    files: dict[str, Path], tmp_path: Path, capfd
) -> None:
    run = tmp_path / "run"
    subprocess.run(["cp", "-r", str(files["run"]), str(run)], check=True)
    assert main([f"logging.run_dir={run}", *QUICK, "--resume", "auto", "optim.total_steps=2"]) == 0
    shard = run / "checkpoints" / "step_00000002" / "__0_0.distcp"
    _cut(shard)
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK, "--resume", "auto", "optim.total_steps=2"]) == 0
    out, err = capfd.readouterr()
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{shard} is cut short" in warnings[0], err
    assert f"resumed from {run / 'checkpoints' / 'step_00000001'} at step 1" in out
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 2]
    assert shard.stat().st_size > 0 and not any("damaged" in w for w in _damage_all(run))  # step 2 written anew

    # Bytes changed in place (the whole shard zeroed, its size kept): the checksums name it, and the run falls back.
    shard.write_bytes(bytes(shard.stat().st_size))
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK, "--resume", "auto", "optim.total_steps=2"]) == 0
    out, err = capfd.readouterr()
    assert f"{shard} does not match its checksum" in err
    assert f"resumed from {run / 'checkpoints' / 'step_00000001'} at step 1" in out

    # The same in a checkpoint written before checksums existed: the size check passes, and DCP's load raises the
    # real CheckpointException (a BaseException, not an Exception); it is skipped the same way, in one line.
    shard.write_bytes(bytes(shard.stat().st_size))
    (shard.parent / "checksums.json").unlink()
    capfd.readouterr()
    assert main([f"logging.run_dir={run}", *QUICK, "--resume", "auto", "optim.total_steps=2"]) == 0
    out, err = capfd.readouterr()
    warning = next(line for line in err.splitlines() if line.startswith(f"warning: checkpoint {shard.parent}"))
    assert "does not load (rank 0: " in warning and warning.endswith("trying an older one"), err
    assert "Traceback" not in err
    assert f"resumed from {run / 'checkpoints' / 'step_00000001'} at step 1" in out


def _damage_all(run: Path) -> list[str]:
    from trainer.checkpoint.check import resume_candidates

    return resume_candidates(run).warnings


def test_debug_adds_the_traceback(files: dict[str, Path], tmp_path: Path, capfd, monkeypatch) -> None:
    monkeypatch.setenv("FASTSLOW_DEBUG", "1")
    assert main([f"logging.run_dir={tmp_path / 'r'}", *QUICK, f"data.source={files['root'] / 'nope.jsonl'}"]) == 2
    err = capfd.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: ")


@pytest.mark.distributed
@pytest.mark.slow
def test_under_torchrun_rank_0_says_it_once_and_the_error_file_holds_it(files: dict[str, Path], tmp_path) -> None:
    error_file = tmp_path / "error.txt"
    env = dict(os.environ, TRITON_INTERPRET="0", OMP_NUM_THREADS="1", FASTSLOW_ERROR_FILE=str(error_file))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "trainer.main",
        f"logging.run_dir={tmp_path / 'r'}", *QUICK, f"model.path={files['prefixed']}",
    ]  # fmt: skip
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert "exitcode  : 2" in out.stderr, out.stderr[-3000:]
    ours = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(ours) == 1 and "prefixed" in ours[0] and "Traceback" not in out.stderr.split("error: ")[0]
    assert error_file.read_text().strip() == ours[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(("rank", "lines"), [("0", 1), ("1", 0)])
def test_a_config_error_before_the_process_group_is_said_by_rank_0_only(capfd, monkeypatch, rank, lines) -> None:
    """Config parsing runs before the process group exists: torchrun's RANK decides who prints."""
    monkeypatch.setenv("RANK", rank)
    assert main(["checkpoint.keep=0"]) == 2
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == lines and all(line.startswith("config error: checkpoint.keep") for line in err)
