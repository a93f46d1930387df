"""FAST-GRPO's Slow2Fast curriculum (arXiv 2504.18458): online filtering of groups by accuracy, on a schedule.

A `FilterSchedule` is a list of `(until_ratio, low, high)` entries. At training progress `r = step / total_steps`
the first entry with `r <= until_ratio` applies (the last one stays in force past its ratio), and a group is kept
iff `low < acc_g < high`, strictly. The seed's default `SLOW2FAST` keeps medium-to-hard groups in the first half
(`0.3 < acc < 0.99`) and then medium-to-easy ones (`0.01 < acc < 0.7`); `DAPO` only drops all-wrong and all-right
groups throughout.

`OnlineFilter` refills a step's batch: generate a chunk of prompts, score it, `add` it, repeat until `done` (at
least `target_groups` kept), then `result()` truncates to exactly `target_groups` in arrival order. A cap on
chunks per step raises `FilterExhausted`, which says why, instead of looping forever.

Departures from the seed code: none. The seed README's prose describes the phases the other way round (easy first);
its code does what is written here, and we follow the code (see docs/algorithms.md, "Slow2Fast filter").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from fastslow._checks import check_accuracy, check_finite_number, check_int
from fastslow.choices import FILTER_PRESETS

__all__ = ["DAPO", "SLOW2FAST", "FilterExhausted", "FilterResult", "FilterSchedule", "OnlineFilter"]


def _check_progress(progress: object) -> float:
    progress = check_finite_number("progress", progress)
    if progress < 0:
        raise ValueError(f"progress must be a finite number >= 0 (step / total_steps), got {progress!r}")
    return progress


@dataclass(frozen=True)
class FilterSchedule:
    """Accuracy bounds `(low, high)` by training progress; immutable, so presets can be shared."""

    entries: tuple[tuple[float, float, float], ...]
    """`(until_ratio, low, high)`, until_ratio strictly increasing, `0 <= low < high <= 1`."""

    PRESETS: ClassVar[tuple[str, ...]] = FILTER_PRESETS

    def __init__(self, entries: Sequence[Sequence[float]]):
        """Validates `entries`; ValueError names the offending entry's index and value."""
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence) or len(entries) == 0:
            raise ValueError(f"entries must be a non-empty sequence of (until_ratio, low, high), got {entries!r}")
        checked: list[tuple[float, float, float]] = []
        for i, entry in enumerate(entries):
            if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 3:
                raise ValueError(f"entries[{i}] must be (until_ratio, low, high), got {entry!r}")
            try:
                until, low, high = (check_finite_number(f"entries[{i}]", x) for x in entry)
            except ValueError:
                raise ValueError(f"entries[{i}] must hold three finite numbers, got {entry!r}") from None
            if until < 0:
                raise ValueError(f"entries[{i}] until_ratio must be >= 0, got {entry!r}")
            if checked and until <= checked[-1][0]:
                raise ValueError(
                    f"entries[{i}] until_ratio must be greater than that of entries[{i - 1}] "
                    f"({checked[-1][0]}), got {entry!r}"
                )
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(f"entries[{i}] must have 0 <= low < high <= 1, got {entry!r}")
            checked.append((until, low, high))
        object.__setattr__(self, "entries", tuple(checked))

    @classmethod
    def preset(cls, name: str) -> FilterSchedule:
        """A named schedule: "slow2fast" (the seed's default) or "dapo" (drop all-wrong and all-right groups)."""
        presets = {"slow2fast": SLOW2FAST, "dapo": DAPO}
        if name not in presets:
            raise ValueError(f"name must be one of {', '.join(map(repr, cls.PRESETS))}; got {name!r}")
        return presets[name]

    def bounds(self, progress: float) -> tuple[float, float]:
        """`(low, high)` in force at `progress` (`step / total_steps`, `>= 0`; past the last ratio the last stays)."""
        progress = _check_progress(progress)
        for until, low, high in self.entries:
            if progress <= until:
                return low, high
        return self.entries[-1][1], self.entries[-1][2]

    def keep(self, group_accuracy: Tensor, progress: float) -> Tensor:
        """Which groups pass the filter: `low < acc < high`, strictly.

        Args:
            group_accuracy: `[G]` real, each in [0, 1]. Compared in its own dtype (float32 for bool/int), so an
                accuracy equal to a bound as written (0.3 in float32 vs 0.3) is excluded.
            progress: `step / total_steps`.

        Returns:
            `[G]` bool, on `group_accuracy`'s device.
        """
        acc_G = check_accuracy("group_accuracy", group_accuracy)
        low, high = self.bounds(progress)
        return (acc_G > low) & (acc_G < high)


SLOW2FAST = FilterSchedule([(0.5, 0.3, 0.99), (1.0, 0.01, 0.7)])
"""The seed's default: medium-to-hard groups for the first half, medium-to-easy ones after."""

DAPO = FilterSchedule([(1.0, 0.01, 0.99)])
"""DAPO's dynamic sampling: drop groups that are all wrong or all right; the default with no schedule."""


class FilterResult(NamedTuple):
    """The kept groups of one step, exactly `target_groups` of them, in arrival order (then the top-up, if any)."""

    group_accuracy: Tensor
    """`[target_groups]` float32 accuracies of the kept groups (on CPU)."""
    items: list[Any]
    """The payload of each kept group (see `OnlineFilter.add`)."""
    filled: int = 0
    """How many of them are rejected groups topping up a batch the filter could not fill (`result(fill=True)`)."""


class FilterExhausted(RuntimeError):
    """The chunk cap of one step was reached with fewer than `target_groups` groups kept."""


class OnlineFilter:
    """Accumulates filtered groups over generation chunks until a step's batch is full.

    Use per training step: `start(progress)`; then, while not `done`, generate a chunk, score it and
    `add(group_accuracy, items)`; then `result()`. `metrics()` reports the step; `state_dict()` keeps the
    cumulative counters across steps (checkpoints are taken between steps: the groups of a step in flight are not
    saved).
    """

    def __init__(self, schedule: FilterSchedule, target_groups: int, *, max_chunks: int):
        """
        Args:
            schedule: the accuracy bounds by progress.
            target_groups: groups a step needs, `>= 1` (the rollout batch size in prompts).
            max_chunks: most chunks a step may generate, `>= 1`, before `add` raises `FilterExhausted`.
        """
        if not isinstance(schedule, FilterSchedule):
            raise ValueError(f"schedule must be a FilterSchedule, got {type(schedule).__name__}")
        check_int("target_groups", target_groups, minimum=1)
        check_int("max_chunks", max_chunks, minimum=1)
        self.schedule = schedule
        self.target_groups = target_groups
        self.max_chunks = max_chunks
        # Cumulative over the run (saved).
        self.steps = 0
        self.total_chunks = 0
        self.total_seen = 0
        self.total_kept = 0
        # The current (or last) step.
        self._progress: float | None = None
        self._bounds: tuple[float, float] | None = None
        self._chunks = 0
        self._seen = 0
        self._kept_acc: list[Tensor] = []
        self._kept_items: list[Any] = []
        self._rejected: list[tuple[Tensor, Any]] = []  # (accuracy, payload) of the dropped groups, arrival order
        self._seen_acc: list[Tensor] = []
        self._active = False

    def start(self, progress: float) -> None:
        """Begins a step at `progress` (`step / total_steps`), dropping whatever the last step held."""
        self._bounds = self.schedule.bounds(progress)
        self._progress = _check_progress(progress)
        self._chunks = 0
        self._seen = 0
        self._kept_acc = []
        self._kept_items = []
        self._rejected = []
        self._seen_acc = []
        self._active = True
        self.steps += 1

    @property
    def kept(self) -> int:
        """Groups kept so far this step (before truncation to `target_groups`)."""
        return len(self._kept_items)

    @property
    def done(self) -> bool:
        """At least `target_groups` groups are kept this step."""
        return self.kept >= self.target_groups

    def add(self, group_accuracy: Tensor, items: Sequence[Any] | None = None) -> Tensor:
        """Filters one chunk and keeps the groups that pass.

        Args:
            group_accuracy: `[G_chunk]` real, each in [0, 1]: the accuracy of each group of the chunk.
            items: one payload per group, any objects (the group's responses and rewards, a row index, ...);
                None stands for each group's arrival index within the step (0, 1, ... across chunks), for callers
                that keep the groups themselves.

        Returns:
            `[G_chunk]` bool: which of the chunk's groups were kept.

        Raises:
            RuntimeError: if `start` was not called.
            FilterExhausted: if this is the step's `max_chunks`-th chunk and the target is still not met.
        """
        if not self._active or self._bounds is None or self._progress is None:
            raise RuntimeError("OnlineFilter.add before start(progress): call start at the beginning of each step")
        acc_G = check_accuracy("group_accuracy", group_accuracy).detach()
        g = acc_G.numel()
        if items is None:
            items = range(self._seen, self._seen + g)
        elif isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or len(items) != g:
            size = len(items) if isinstance(items, Sequence) else type(items).__name__
            raise ValueError(f"items must be a sequence with one entry per group ({g}), got {size}")
        if self._chunks >= self.max_chunks:
            if self.done:
                raise RuntimeError(f"OnlineFilter.add past max_chunks={self.max_chunks}; step done: call result()")
            raise self._exhausted()
        low, high = self._bounds
        keep_G = (acc_G > low) & (acc_G < high)  # in acc's own dtype, as FilterSchedule.keep
        acc_cpu_G, keep_cpu_G = acc_G.to("cpu", torch.float32), keep_G.cpu()
        idx = keep_cpu_G.nonzero().flatten().tolist()
        self._kept_acc.append(acc_cpu_G[keep_cpu_G])
        self._kept_items.extend(items[i] for i in idx)
        self._rejected.extend((acc_cpu_G[i], items[i]) for i in (~keep_cpu_G).nonzero().flatten().tolist())
        self._seen_acc.append(acc_cpu_G)
        self._chunks += 1
        self._seen += g
        self.total_chunks += 1
        self.total_seen += g
        self.total_kept += len(idx)
        if not self.done and self._chunks >= self.max_chunks:
            raise self._exhausted()
        return keep_G

    def result(self, *, fill: bool = False) -> FilterResult:
        """Exactly `target_groups` kept groups, in arrival order; ends the step.

        With `fill=True` (after a `FilterExhausted`, to train on a full batch anyway), a step short of its target is
        topped up with its most recently rejected groups, after the kept ones; `filled` counts them.
        """
        if not self._active:
            raise RuntimeError("OnlineFilter.result before start(progress)")
        if not self.done and not fill:
            raise RuntimeError(f"OnlineFilter.result before done: {self.kept} of {self.target_groups} groups kept")
        acc = list(torch.cat(self._kept_acc)[: self.target_groups]) if self._kept_acc else []
        items = self._kept_items[: self.target_groups]
        need = self.target_groups - len(items)
        top_up = self._rejected[len(self._rejected) - need :] if need > 0 else []
        self._active = False
        acc_G = torch.stack([*acc, *(a for a, _ in top_up)]) if acc or top_up else torch.zeros(0)
        return FilterResult(group_accuracy=acc_G, items=[*items, *(it for _, it in top_up)], filled=len(top_up))

    def metrics(self) -> dict[str, float]:
        """The current (or last) step's filtering and the run's totals, for logging; empty before the first step."""
        if self._bounds is None:
            return {}
        kept = self.kept
        return {
            "filter/low": self._bounds[0],
            "filter/high": self._bounds[1],
            "filter/chunks": float(self._chunks),
            "filter/groups_seen": float(self._seen),
            "filter/groups_kept": float(kept),
            "filter/kept_fraction": kept / self._seen if self._seen else 0.0,
            "filter/total_chunks": float(self.total_chunks),
            "filter/total_kept_fraction": self.total_kept / self.total_seen if self.total_seen else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        """Python numbers only (loads with `weights_only=True`): the run's cumulative counters."""
        return {
            "steps": self.steps,
            "total_chunks": self.total_chunks,
            "total_seen": self.total_seen,
            "total_kept": self.total_kept,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict()` exactly; raises ValueError naming a missing or malformed key."""
        keys = ("steps", "total_chunks", "total_seen", "total_kept")
        if not isinstance(state, dict) or set(state) != set(keys):
            got = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"OnlineFilter state must have keys {sorted(keys)}, got {got}")
        for k in keys:
            check_int(f"OnlineFilter state {k!r}", state[k], minimum=0)
        for k in keys:
            setattr(self, k, state[k])

    def _exhausted(self) -> FilterExhausted:
        assert self._bounds is not None and self._progress is not None
        low, high = self._bounds
        seen = torch.cat(self._seen_acc) if self._seen_acc else torch.zeros(0)
        n0 = int((seen == 0).sum())
        n1 = int((seen == 1).sum())
        mid = seen.numel() - n0 - n1
        below = int((seen <= low).sum())
        above = int((seen >= high).sum())
        hist = torch.histc(seen, bins=10, min=0.0, max=1.0).int().tolist() if seen.numel() else [0] * 10
        return FilterExhausted(
            f"curriculum filter: only {self.kept} of {self.target_groups} groups kept after {self._chunks} chunks "
            f"(max_chunks={self.max_chunks}) at progress {self._progress:.4g}, bounds {low} < acc < {high}. "
            f"Accuracies of the {seen.numel()} groups seen: {n0} all-wrong (0), {n1} all-right (1), "
            f"{mid} in between; {below} at or below {low}, {above} at or above {high}; "
            f"histogram over [0, 1] in tenths: {hist}. "
            "Raise max_chunks, widen the schedule's bounds, or use data nearer the model's level."
        )
