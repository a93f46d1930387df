"""SFPO (arXiv 2510.04072): fast steps, reposition, slow correction.

Per rollout batch, with `old_logp` computed once before it (by the caller, from the policy as it was when the
batch was generated, and reused unchanged by all K + 1 updates below):

1. `slow <- snapshot(params)`;
2. fast: K full updates on the same batch (each the usual minibatch loop with its optimizer steps);
3. reposition: `params <- slow + alpha * (params - slow)` (`fastslow.kernels.reposition_`, in place,
   on the local shards);
4. slow correction: one more full update on the same batch; its metrics are the step's.

`sfpo_update` runs that; `EntropySwitch` decides when to stop (turn SFPO into plain GRPO for good) from the
trend of the policy's mean token entropy, or at a fixed step.

The optimizer is never reset: its moments (momentum, Adam's m, v and step count) run on through all K + 1
updates, as in the seed. The LR schedule is the caller's: step it once per rollout batch, not per update.

How this differs from the seed's code (`Urheen/SFPO`, `sfpo_update_actor` and the trainer loop):
- the seed clones every parameter into a python list and lerps one tensor at a time; here the slow copy is one
  flat buffer (reusable from step to step) and the lerp is one fused launch over all local shards;
- none in the timing: the trainer feeds each step's update entropy after that update, as the seed does, so the
  switch decides the *next* step; the rule on the last W values, population std and `z >= threshold` are the
  seed's; `stop_step` (SFPO for the first N steps only) is the seed Demo trainer's `stop_sfpo_step`, counted the
  same way.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import torch

from fastslow._checks import check_finite_number, check_int
from fastslow.kernels import Snapshot, reposition_, snapshot

M = TypeVar("M")

__all__ = ["EntropySwitch", "sfpo_update"]


def sfpo_update(
    params: Iterable[torch.Tensor],
    update_fn: Callable[[], M],
    *,
    inner_steps: int = 3,
    alpha: float = 0.8,
    slow: Snapshot | None = None,
) -> M:
    """One SFPO policy update on one rollout batch: K fast updates, reposition, one slow correction.

    The caller computes `old_logp` (and the advantages, and `ref_logp` if any) once before this call; every
    `update_fn()` reuses them, so the importance ratios of the later updates measure the drift from the
    rollout policy, as in the seed.

    Args:
        params: the trained parameters (those the optimizer steps): tensors, `nn.Parameter`s or FSDP2 DTensor
            parameters (then only the local shards are touched, with no communication). Materialised into a
            list once. Frozen parameters may be included: they are repositioned onto themselves, at the cost of
            snapshot memory.
        update_fn: one full policy update on the batch: the usual minibatch loop, forward, backward and
            optimizer step(s). It owns the optimizer; SFPO never resets or rebuilds it, so its state runs on
            through all `inner_steps + 1` calls. Its return value (metrics) is passed through.
        inner_steps: K >= 0, the number of fast updates. `0` is plain GRPO: `update_fn()` is called once and
            nothing is snapshotted or repositioned (no extra memory or time).
        alpha: reposition step size in [0, 1]. `1` keeps the fast weights (K + 1 plain updates); `0` puts the
            parameters back exactly at `slow`, so the result is "one update from the original parameters",
            i.e. GRPO's parameters, but with the optimizer state advanced by the K fast updates (momentum
            buffers, Adam's moments and step count): it equals one GRPO update exactly only for a stateless
            optimizer (SGD without momentum). Use `inner_steps=0` for true GRPO, which also skips the K updates.
        slow: optional `Snapshot` of these same parameters to refresh in place (`Snapshot.copy_from`) instead
            of allocating a new one: a trainer keeps one and passes it every step. Untouched when K = 0.

    Returns:
        What the slow correction's `update_fn()` returned (the fast updates' metrics are dropped).

    The LR schedule is not stepped here: the caller steps it once per rollout batch, as for GRPO.
    """
    inner_steps = check_int("inner_steps", inner_steps, minimum=0)
    alpha = check_finite_number("alpha", alpha, tensor=True)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if not callable(update_fn):
        raise ValueError(f"update_fn must be callable, got {type(update_fn).__name__}")
    if slow is not None and not isinstance(slow, Snapshot):
        raise ValueError(f"slow must be a fastslow.kernels.Snapshot or None, got {type(slow).__name__}")
    params = list(params)  # a generator (model.parameters()) is walked twice: snapshot and reposition
    if not params:
        raise ValueError("params is empty (an exhausted generator, such as a reused model.parameters()?)")
    if inner_steps == 0:
        return update_fn()

    slow = snapshot(params) if slow is None else slow.copy_from(params)
    for _ in range(inner_steps):
        update_fn()
    reposition_(params, slow, alpha)
    return update_fn()


class EntropySwitch:
    """When to stop SFPO: on an upward jump of the policy's mean token entropy, or at a fixed step.

    Call `update(H_s)` once per training step, after that step's update, with its mean token entropy; it returns
    whether the *next* step's update uses SFPO (`True`) or plain GRPO (`False`), and `active` says the same until
    the next call. Steps are 0-based: step 0's update runs while `active` is its initial value, the call that
    records step k's entropy decides step k + 1, and `steps` counts the calls so far. This is the seed's timing:
    its trainer appends each update's entropy after the update, so a jump at step k makes step k + 1 plain GRPO.

    Entropy rule (the seed's): once `window` (W) values exist, with the last W values *including the one just
    recorded*, `z = (H_last - mean) / (std + 1e-9)`, `std` the population one (ddof = 0). If `z >= threshold`,
    SFPO is off for good: every later call returns False, whatever the entropy does. Before W values no z is
    computed, so no jump, however large, can fire it.

    `stop_step=N`: SFPO for at most the first N steps, 0 .. N-1 (the seed's `stop_sfpo_step >= global_steps`
    with its steps counted from 1): the call recording step N - 1 and every later call return False;
    `stop_step=0` never runs it (`active` is False from the start).

    A non-finite entropy raises `ValueError` and leaves the state unchanged: a NaN must neither fire the switch
    nor poison the window. The trainer skips a step whose loss or entropy is non-finite (and does not report it).
    """

    def __init__(self, window: int = 30, threshold: float = 1.0, *, stop_step: int | None = None) -> None:
        self.window = check_int("window", window, minimum=2)
        self.threshold = check_finite_number("threshold", threshold, tensor=True)
        self.stop_step = None if stop_step is None else check_int("stop_step", stop_step, minimum=0)
        self._history: deque[float] = deque(maxlen=self.window)  # the last W entropies, oldest first
        self._steps = 0
        self._switched_at: int | None = None
        self._reason: str | None = None
        self._last_z: float | None = None
        if self.stop_step == 0:
            self._reason, self._switched_at = "stop_step", 0

    @property
    def active(self) -> bool:
        """Whether the next step's update uses SFPO: what the last `update()` returned (before any call: True
        unless stop_step=0)."""
        return self._reason is None

    @property
    def steps(self) -> int:
        """How many entropies were recorded (calls to `update`); the next call is step `steps`."""
        return self._steps

    @property
    def switched_at(self) -> int | None:
        """The first step (0-based) whose update is plain GRPO, or None while SFPO is on: one after the step whose
        entropy fired the switch, or `stop_step`."""
        return self._switched_at

    @property
    def reason(self) -> str | None:
        """Why SFPO went off: "entropy" (the z-score rule) or "stop_step"; None while it is on."""
        return self._reason

    @property
    def last_z(self) -> float | None:
        """The z-score of the last step (for logging); None until W values exist."""
        return self._last_z

    def update(self, entropy: float) -> bool:
        """Record step `steps`'s mean token entropy; return whether the next step's update uses SFPO."""
        h = check_finite_number("entropy", entropy, tensor=True)
        step = self._steps
        self._history.append(h)
        self._steps += 1
        self._last_z = None
        if len(self._history) == self.window:
            mean = statistics.fmean(self._history)
            std = statistics.pstdev(self._history, mean)  # population std (ddof = 0), as np.std in the seed
            self._last_z = (h - mean) / (std + 1e-9)
        if self._reason is None:
            if self.stop_step is not None and step + 1 >= self.stop_step:
                self._reason, self._switched_at = "stop_step", step + 1
            elif self._last_z is not None and self._last_z >= self.threshold:
                self._reason, self._switched_at = "entropy", step + 1
        return self._reason is None

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to make the same decisions: plain python values only."""
        return {
            "history": list(self._history),
            "steps": self._steps,
            "switched_at": self._switched_at,
            "reason": self._reason,
            "last_z": self._last_z,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore `state_dict()`'s output. A history longer than `window` keeps its last `window` values."""
        missing = {"history", "steps", "switched_at", "reason", "last_z"} - set(state)
        if missing:
            raise ValueError(f"EntropySwitch state is missing {sorted(missing)}")
        history = [
            check_finite_number(f"state['history'][{i}]", h, tensor=True) for i, h in enumerate(state["history"])
        ]
        steps = check_int("state['steps']", state["steps"], minimum=len(history[-self.window :]))
        switched_at, reason = state["switched_at"], state["reason"]
        if reason not in (None, "entropy", "stop_step"):
            raise ValueError(f"state['reason'] must be None, 'entropy' or 'stop_step', got {reason!r}")
        if (switched_at is None) != (reason is None):
            raise ValueError("state['switched_at'] and state['reason'] must both be set or both be None")
        if switched_at is not None:
            check_int("state['switched_at']", switched_at, minimum=0)
            if switched_at > steps or (switched_at == 0 and reason != "stop_step"):
                raise ValueError(f"state['switched_at'] ({switched_at}) must be <= state['steps'] ({steps})")
        last_z = state["last_z"]
        last_z = None if last_z is None else check_finite_number("state['last_z']", last_z, tensor=True)
        self._history = deque(history, maxlen=self.window)
        self._steps, self._switched_at, self._reason, self._last_z = steps, switched_at, reason, last_z
