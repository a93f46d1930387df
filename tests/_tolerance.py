"""One tolerance table for every kernel test: (atol, rtol) by input dtype, against a float64 reference.

The kernels compute in float32 whatever the input dtype; the reference runs in float64 on the same (already
rounded) inputs. `atol` is relative to the largest entry of the expected tensor, because the float32 errors
that need it come from cancellation (`exp(d) - d - 1`, `1 - exp(d)`, sums of signed terms) and scale with the
size of the terms, not with the result.
"""

from __future__ import annotations

import torch

TOL: dict[torch.dtype, dict[str, tuple[float, float]]] = {
    # float32 math against float64: a few float32 ulps (1.2e-7) of the largest term after cancellation.
    torch.float32: {"value": (1e-6, 1e-5), "grad": (1e-6, 1e-5)},
    # bf16 inputs: values are float32 math on exact bf16 inputs, so as tight as float32. The gradient is returned
    # in bf16 (logp's dtype) after one rounding: half an ulp, 2^-8 = 3.9e-3 relative; rtol allows 2x for the
    # float32 error in front of that rounding, atol covers entries far below the largest.
    torch.bfloat16: {"value": (1e-6, 1e-5), "grad": (4e-3, 8e-3)},
    # fp16 gradient: one rounding to 11 bits of mantissa, 2^-11 = 4.9e-4 relative; rtol allows 2x.
    torch.float16: {"value": (1e-6, 1e-5), "grad": (5e-4, 1e-3)},
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str) -> None:
    """Compare in float64 with the table's tolerance for `dtype` and `kind` ("value" or "grad")."""
    atol, rtol = TOL[dtype][kind]
    scale = max(expected.detach().abs().max().item(), 1e-30) if expected.numel() else 1.0
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol * scale, rtol=rtol)
