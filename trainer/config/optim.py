"""The `[optim]` section: AdamW, its schedule, and how an update splits the batch."""

from __future__ import annotations

from dataclasses import dataclass

from trainer.config.base import _Section, warn

__all__ = ["OptimConfig"]


@dataclass
class OptimConfig(_Section):
    """AdamW, its schedule (linear warmup, then constant) and how an update splits the batch."""

    SECTION = "optim"
    lr: float = 5e-4
    """Peak learning rate (the built-in job's, for the warm-started tiny model; the 1.5B presets use 1e-6)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas, each in [0, 1)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0: no clipping; the norm is still logged)."""
    warmup_steps: int = 0
    """Linear learning-rate warmup, in steps."""
    total_steps: int = 100
    """Training steps (one rollout batch each); also the denominator of the curriculum's progress."""
    minibatches: int = 1
    """Optimizer steps per update: the batch is split into this many minibatches."""
    epochs: int = 1
    """Passes over the batch per update."""
    skip_old_logprobs: bool = True
    """Skip the old-log-prob pass when it is redundant (one epoch, one minibatch, no SFPO inner steps; stale batches
    and `rollout.is_correction` included, which take the proximal log-probs from the update's forward): the update
    then takes the ratio as 1 with the gradient of `exp(logp - logp.detach())`, the same loss, gradients and metrics
    to float rounding (`trainer.step.skips_old_logprobs`; the metric `actor/old_logp_pass` says which path ran).
    False: always run the pass."""
    micro_batch_size: int = 32
    """Sequences per forward/backward (gradient accumulation within a minibatch) when `packing` is off."""
    packing: bool = True
    """Padding-free passes: every policy/reference pass packs the sequences (prompt + response) into rows of at
    most `micro_batch_tokens` tokens, one row per forward/backward, attention kept within each sequence
    (`model.attn_implementation`). Off: right-padded micro-batches of `micro_batch_size` sequences. The loss,
    gradients and metrics are the same either way (up to float rounding); packing skips the padding's FLOPs."""
    micro_batch_tokens: int = 0
    """With `packing`: the token budget of one row (a longer sequence gets a row of its own). 0: the device's
    default, 4096 on a CPU and 16384 on an accelerator (`trainer.packing.DEFAULT_ROW_TOKENS`)."""
    max_bad_steps: int = 10
    """Stop the run after this many steps in a row whose update was skipped because the loss or the gradient norm
    was not finite (the parameters and optimizer state stay as they were; the last good checkpoint is kept)."""
    max_param_abs: float = 1e4
    """An update that leaves any parameter non-finite or larger than this in magnitude has diverged: the run stops
    at once (exit 3), saving nothing, naming the last good checkpoint. Trained LMs' weights are far below 1e4;
    bf16 overflows at ~3.4e38, and logits (hence sampling) long before."""

    def validate(self) -> None:
        self._require(self.lr > 0, "lr", "must be > 0")
        self._at_least(0, "weight_decay", "grad_clip", "warmup_steps")
        self._require(all(0 <= b < 1 for b in self.betas), "betas", "each must be in [0, 1)")
        self._at_least(1, "total_steps", "minibatches", "epochs", "micro_batch_size", "max_bad_steps")
        self._at_least(0, "micro_batch_tokens")
        self._require(self.max_param_abs > 0, "max_param_abs", "must be > 0")
        if not 1e-9 <= self.lr <= 1.0:  # legal, but likely a typo
            warn(f"optim.lr = {self.lr:g} is far outside the usual range (about 1e-7 to 1e-2): a typo?")
