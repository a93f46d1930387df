"""Host memory per rank falls with the world size (issue 18): W = 1 and W = 2 runs of the Trainer, measured.

A 23M-parameter model (92 MB in fp32: large against the ~40 MB a run needs besides its model, small enough for a
few seconds per run), a reference model, the hf engine, an 8 MiB sync bucket, one step. The bounds are the issue's
targets (5 / W + 1.5 times the model: 6.5 at W = 1, 4.0 at W = 2) plus 0.8 for that non-model memory, which this
test does not subtract (`python -m bench.memory` does, for the README's figures). Before sharded construction a
rank held 7-8 times the model at W = 2, and no less than at W = 1 (8.5x and 7.4x with `bench.memory`).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from bench.memory import make_folder, peaks

NON_MODEL = 0.8  # ~40 MB (tokenizer, data, activations, generation, lazy imports) / 92 MB: 0.4, doubled
# Measured here: 6.80 at W = 1, 4.10 at W = 2.


@pytest.mark.distributed
@pytest.mark.slow
def test_peak_memory_per_rank_falls_with_the_world_size(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    model_bytes = make_folder(folder, hidden=384, layers=12, intermediate=1152)
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side: each process's peak is its own
        one, two = pool.map(lambda w: max(peaks(folder, w)) / model_bytes, (1, 2))
    assert one <= 6.5 + NON_MODEL, one
    assert two <= 4.0 + NON_MODEL, two
    assert two <= one - 2.0, (one, two)  # the shards' share (5 / W) halves; the engine's copy stays
