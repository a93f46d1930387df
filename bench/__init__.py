"""fastslow's benchmarks (kernels, a training step, weight sync): every figure beside its baselines, in one run.

    .venv/bin/python -m pytest bench/ --benchmark-only --benchmark-json=bench/results/RUN.json
    .venv/bin/python -m bench.report bench/results/RUN.json -o bench/results/RUN.md

(`make bench` does both and names the files after the device and the date.) Each case records in its
`extra_info` the provider, shape, dtype, mode, median time with spread, peak extra memory, achieved TFLOP/s or GB/s
and its fraction of the device's ceilings (a GEMM and a copy measured once in the same session), or tokens/s for a
training step, and the device, versions and date. On a CPU-only machine the suite runs the CPU paths at small
shapes and skips GPU-only providers with a reason.
"""
