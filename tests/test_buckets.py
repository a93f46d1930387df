"""`trainer.buckets.byte_buckets`: consecutive items up to a byte limit, an oversized item alone, lazily."""

from __future__ import annotations

from trainer.buckets import byte_buckets


def test_buckets_fill_up_to_the_limit_and_an_oversized_item_goes_alone() -> None:
    sizes = [3, 4, 2, 10, 1, 1, 5]
    assert list(byte_buckets(sizes, lambda n: n, 6)) == [[3], [4, 2], [10], [1, 1], [5]]
    assert list(byte_buckets(sizes, lambda n: n, 100)) == [sizes]
    assert list(byte_buckets([], lambda n: n, 6)) == []


def test_a_bucket_is_yielded_before_the_rest_is_read() -> None:
    read = []

    def items():
        for n in (4, 4, 4):
            read.append(n)
            yield n

    first = next(byte_buckets(items(), lambda n: n, 5))
    assert first == [4] and read == [4, 4]  # the second item was read to know the first bucket is full
