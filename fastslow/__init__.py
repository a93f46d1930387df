"""fastslow: FAST-GRPO (arXiv 2504.18458) and SFPO (arXiv 2510.04072) as plain tensor code, and their kernels.

    from fastslow import group_advantages, thinking_reward, KLController, OnlineFilter, sfpo_update, EntropySwitch
    from fastslow.kernels import token_logprobs, linear_grpo_loss, grpo_loss, low_var_kl, reposition_

No distributed code here: the trainer (or any other) calls these on its local tensors.

The names below load on first use (PEP 562), so `import fastslow.kernels` loads none of them: only torch and, where
it is installed, Triton. Scoring responses (the math grader and its verifier) is the trainer's: `trainer.reward`.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from fastslow.lazy_exports import lazy_exports

# public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    "group_advantages": "advantages",
    "DAPO": "curriculum",
    "SLOW2FAST": "curriculum",
    "FilterExhausted": "curriculum",
    "FilterSchedule": "curriculum",
    "OnlineFilter": "curriculum",
    "KL_MODES": "dynamic_kl",
    "KLController": "dynamic_kl",
    "group_kl_coef": "dynamic_kl",
    "EntropySwitch": "sfpo",
    "sfpo_update": "sfpo",
    "ThinkingReward": "thinking_reward",
    "thinking_reward": "thinking_reward",
}

__all__ = [
    "DAPO",
    "KL_MODES",
    "SLOW2FAST",
    "EntropySwitch",
    "FilterExhausted",
    "FilterSchedule",
    "KLController",
    "OnlineFilter",
    "ThinkingReward",
    "group_advantages",
    "group_kl_coef",
    "sfpo_update",
    "thinking_reward",
]

if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from fastslow.advantages import group_advantages
    from fastslow.curriculum import DAPO, SLOW2FAST, FilterExhausted, FilterSchedule, OnlineFilter
    from fastslow.dynamic_kl import KL_MODES, KLController, group_kl_coef
    from fastslow.sfpo import EntropySwitch, sfpo_update
    from fastslow.thinking_reward import ThinkingReward, thinking_reward


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


class _Package(types.ModuleType):
    """`fastslow` itself. A public function may share its submodule's name (`thinking_reward`); importing such a
    submodule sets the package attribute to the module, which would shadow the function for every later
    `from fastslow import thinking_reward`. The function wins, as it did when this file imported
    everything eagerly."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
