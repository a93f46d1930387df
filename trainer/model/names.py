"""Parameter names as the Hugging Face model has them: the one mapping the export and the weight sync share."""

from __future__ import annotations

__all__ = ["WRAPPERS", "hf_name"]

WRAPPERS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})
"""Module names that wrappers insert into parameter names: FSDP1, activation checkpointing, torch.compile."""


def hf_name(name: str, prefix: str = "") -> str:
    """The HF model's name for a trained parameter: wrapper components dropped, then a leading `prefix` stripped.

    E.g. "_orig_mod.lm.model.layers.0._checkpoint_wrapped_module.mlp.up_proj.weight" with prefix "lm." ->
    "model.layers.0.mlp.up_proj.weight". Only whole dotted components are wrappers (a module named
    "my_orig_mod" stays), and the prefix is stripped after them, so a wrapper in front of it does not hide it. A
    name without the prefix is kept as it is: the export skips it, the engine rejects it by name.
    """
    name = ".".join(part for part in name.split(".") if part not in WRAPPERS)
    return name.removeprefix(prefix) if prefix else name
