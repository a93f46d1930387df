"""Consecutive items grouped by size: the weight sync's buckets of full tensors, the replicas' gradient buckets."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def byte_buckets(items: Iterable[T], nbytes: Callable[[T], int], limit: int) -> Iterator[list[T]]:
    """`items` in order, in lists of at most `limit` bytes (`nbytes(item)` each); an item larger than `limit` goes
    alone. Lazy: a bucket is yielded as soon as the next item would not fit, before the rest is read."""
    bucket: list[T] = []
    filled = 0
    for item in items:
        size = nbytes(item)
        if bucket and filled + size > limit:
            yield bucket
            bucket, filled = [], 0
        bucket.append(item)
        filled += size
    if bucket:
        yield bucket
