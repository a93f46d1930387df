"""Which prompts each rank takes next: a resumable, per-epoch reshuffled order, split across ranks."""

from __future__ import annotations

import torch

__all__ = ["PromptSampler"]


class PromptSampler:
    """Which dataset items each rank takes next: chunks of a per-epoch permutation, split across ranks.

    Epoch `e` visits the items in the order `torch.randperm(n_items)` drawn from a generator seeded with
    `seed + e`. Every call to `next_chunk` advances all ranks by the same `prompts_per_chunk` positions (a global
    chunk); rank `r` takes the `r`-th slice of `prompts_per_chunk // world` items, so the ranks' items are disjoint.
    An epoch's last incomplete chunk is dropped (the next epoch's reshuffle picks those items up), so a chunk never
    holds the same item twice.

    The order of the global chunks depends on the seed, the dataset size and the chunk size only, never on the
    number of ranks: `world` only says how each chunk is split. So the state (`state_dict()`: the global count of
    prompts consumed) is the same on every rank, and a run resumed on another number of ranks goes on with the very
    prompts the saved run would have drawn next.
    """

    def __init__(self, n_items: int, prompts_per_chunk: int, *, seed: int, rank: int = 0, world: int = 1) -> None:
        for name, value, least in (("n_items", n_items, 1), ("prompts_per_chunk", prompts_per_chunk, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}, got {value!r}")
        if isinstance(world, bool) or not isinstance(world, int) or world < 1:
            raise ValueError(f"world must be an int >= 1, got {world!r}")
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world:
            raise ValueError(f"rank must be an int in [0, {world}), got {rank!r}")
        if prompts_per_chunk % world != 0:
            raise ValueError(f"prompts_per_chunk={prompts_per_chunk} is not divisible by the world size {world}")
        if prompts_per_chunk > n_items:
            raise ValueError(
                f"a chunk of {prompts_per_chunk} prompts needs at least that many dataset items, got {n_items}"
            )
        self.n_items, self.prompts_per_chunk = n_items, prompts_per_chunk
        self.seed, self.rank, self.world = int(seed), rank, world
        self.epoch, self.position = 0, 0
        self._order: torch.Tensor | None = None

    def _permutation(self) -> torch.Tensor:
        """The current epoch's order of all items, cached as an int64 tensor (8 bytes an item: a Python list of a
        million ints would be ~40 MB)."""
        if self._order is None:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            self._order = torch.randperm(self.n_items, generator=gen)
        return self._order

    def next_chunk(self) -> list[int]:
        """This rank's `prompts_per_chunk // world` item indices of the next global chunk."""
        if self.position + self.prompts_per_chunk > self.n_items:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        chunk = self._permutation()[self.position : self.position + self.prompts_per_chunk].tolist()
        self.position += self.prompts_per_chunk
        per_rank = self.prompts_per_chunk // self.world
        return chunk[self.rank * per_rank : (self.rank + 1) * per_rank]

    @property
    def consumed(self) -> int:
        """Prompts drawn so far by all ranks together (dropped epoch tails not counted)."""
        return self.epoch * self._per_epoch() + self.position

    def _per_epoch(self) -> int:
        """Prompts an epoch hands out: its whole chunks."""
        return self.n_items // self.prompts_per_chunk * self.prompts_per_chunk

    def state_dict(self) -> dict[str, int]:
        """The data position, as the global count of prompts consumed (plain ints; identical on every rank)."""
        return {
            "consumed": self.consumed,
            "seed": self.seed,
            "n_items": self.n_items,
            "prompts_per_chunk": self.prompts_per_chunk,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continues from `state` (saved at any world size; also the `epoch` / `position` form of older checkpoints);
        the dataset size, seed and chunk size must be the ones it was saved with."""
        for key in ("n_items", "seed", "prompts_per_chunk"):
            if key in state and int(state[key]) != getattr(self, key):
                raise ValueError(
                    f"sampler state: saved with {key}={state[key]} but this run has {key}={getattr(self, key)} "
                    "(the data or its config changed since the checkpoint)"
                )
        if "consumed" in state:
            consumed = int(state["consumed"])
            if consumed < 0 or consumed % self.prompts_per_chunk:
                raise ValueError(f"sampler state: bad count of prompts consumed {consumed}")
            epoch, position = divmod(consumed, self._per_epoch())
        else:
            epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.n_items:
            raise ValueError(f"sampler state: bad epoch/position {epoch}/{position} for {self.n_items} items")
        self.epoch, self.position, self._order = epoch, position, None
