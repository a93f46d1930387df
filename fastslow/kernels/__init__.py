"""fastslow kernels: fused Triton ops for GRPO-style RL updates, usable from any trainer.

    from fastslow.kernels import token_logprobs, linear_grpo_loss, grpo_loss, low_var_kl, reposition_, snapshot

The GRPO losses take their fixed knobs as one `LossSettings` (`settings=`), checked once when it is made.

Each op runs its Triton kernel on CUDA, its native or torch implementation on CPU (`fastslow.kernels._dispatch`), is a
torch custom op (so `torch.compile` traces through it), and has a plain-torch `*_ref` beside it.
"""

from fastslow.kernels.grpo import grpo_loss, grpo_loss_ref
from fastslow.kernels.kl import KL_ESTIMATORS, low_var_kl, low_var_kl_ref
from fastslow.kernels.linear_grpo import linear_grpo_loss, linear_grpo_loss_ref
from fastslow.kernels.logprobs import IGNORE_INDEX, token_logprobs, token_logprobs_ref
from fastslow.kernels.loss_settings import LOSS_AGGS, LossSettings
from fastslow.kernels.reposition import Snapshot, reposition_, reposition_ref, snapshot

__all__ = [
    "IGNORE_INDEX",
    "KL_ESTIMATORS",
    "LOSS_AGGS",
    "LossSettings",
    "Snapshot",
    "grpo_loss",
    "grpo_loss_ref",
    "linear_grpo_loss",
    "linear_grpo_loss_ref",
    "low_var_kl",
    "low_var_kl_ref",
    "reposition_",
    "reposition_ref",
    "snapshot",
    "token_logprobs",
    "token_logprobs_ref",
]
