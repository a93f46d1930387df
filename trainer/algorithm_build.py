"""The algorithm's stateful parts, made from `AlgorithmConfig`: curriculum filter, SFPO entropy switch, KL control."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from fastslow import EntropySwitch, FilterSchedule, KLController

if TYPE_CHECKING:
    from trainer.config import AlgorithmConfig


@dataclass
class AlgorithmState:
    """What the step carries from one step to the next for the algorithm (each part checkpoints its own state)."""

    schedule: FilterSchedule | None
    """The online filter's schedule (`algorithm.filter`); None: no filtering."""
    switch: EntropySwitch | None
    """SFPO's entropy switch (`algorithm.update = "sfpo"`); None: plain GRPO updates."""
    kl: KLController
    """The KL coefficient, fixed or by (group) accuracy (`algorithm.kl_type`)."""


def build_algorithm(a: AlgorithmConfig) -> AlgorithmState:
    """The filter schedule, entropy switch and KL controller that `a` asks for, each fresh."""
    if a.filter == "none":
        schedule = None
    elif a.filter == "custom":
        schedule = FilterSchedule(a.schedule_entries())
    else:
        schedule = FilterSchedule.preset(a.filter)
    switch = None
    if a.update == "sfpo":
        s = a.sfpo
        switch = EntropySwitch(s.entropy_window, s.entropy_threshold, stop_step=s.stop_step)
    kl = KLController(a.kl_type, coef=a.kl_coef, beta_min=a.kl_min, beta_max=a.kl_max)
    return AlgorithmState(schedule=schedule, switch=switch, kl=kl)
