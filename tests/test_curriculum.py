"""fastslow.curriculum: the Slow2Fast schedule, its strict bounds, and the online refill filter."""

from __future__ import annotations

import io

import pytest
import torch

from fastslow.curriculum import DAPO, SLOW2FAST, FilterExhausted, FilterSchedule, OnlineFilter


def test_schedule_boundary_exactly_at_ratio_uses_that_entry() -> None:
    assert SLOW2FAST.bounds(0.0) == (0.3, 0.99)
    assert SLOW2FAST.bounds(0.5) == (0.3, 0.99)  # r <= until_ratio: the first entry still applies
    assert SLOW2FAST.bounds(0.5 + 1e-9) == (0.01, 0.7)
    assert SLOW2FAST.bounds(1.0) == (0.01, 0.7)


def test_last_entry_stays_past_the_end() -> None:
    assert SLOW2FAST.bounds(1.0 + 1e-9) == (0.01, 0.7)
    assert SLOW2FAST.bounds(7.0) == (0.01, 0.7)
    short = FilterSchedule([(0.2, 0.1, 0.9), (0.6, 0.2, 0.8)])
    assert short.bounds(0.7) == (0.2, 0.8)


def test_keep_is_strict_at_both_bounds() -> None:
    acc = torch.tensor([0.3, 0.99, 0.3 + 1e-6, 0.99 - 1e-6, 0.5, 0.0, 1.0])
    assert SLOW2FAST.keep(acc, 0.2).tolist() == [False, False, True, True, True, False, False]
    # Second phase: 0.01 < acc < 0.7.
    acc = torch.tensor([0.01, 0.7, 0.01 + 1e-6, 0.7 - 1e-6, 0.3, 0.99])
    assert SLOW2FAST.keep(acc, 0.75).tolist() == [False, False, True, True, True, False]


def test_keep_float64_and_bool_accuracy() -> None:
    assert SLOW2FAST.keep(torch.tensor([0.3, 0.31], dtype=torch.float64), 0.1).tolist() == [False, True]
    assert DAPO.keep(torch.tensor([True, False]), 0.1).tolist() == [False, False]


def test_presets() -> None:
    assert FilterSchedule.preset("slow2fast") is SLOW2FAST
    assert FilterSchedule.preset("dapo") is DAPO
    assert SLOW2FAST.entries == ((0.5, 0.3, 0.99), (1.0, 0.01, 0.7))
    assert DAPO.entries == ((1.0, 0.01, 0.99),)
    assert DAPO.bounds(0.0) == DAPO.bounds(3.0) == (0.01, 0.99)
    assert FilterSchedule([[0.5, 0.3, 0.99], [1, 0.01, 0.7]]) == SLOW2FAST
    with pytest.raises(ValueError, match="'slow2fast', 'dapo'"):
        FilterSchedule.preset("fast2slow")


@pytest.mark.parametrize(
    ("entries", "match"),
    [
        ([], "non-empty"),
        ("abc", "non-empty"),
        ([(0.5, 0.3)], r"entries\[0\]"),
        ([(0.5, 0.3, 0.99), (0.5, 0.01, 0.7)], r"entries\[1\].*greater"),
        ([(0.5, 0.3, 0.99), (0.4, 0.01, 0.7)], r"entries\[1\].*greater"),
        ([(1.0, 0.5, 0.5)], r"entries\[0\].*low < high"),
        ([(0.5, 0.3, 0.99), (1.0, 0.8, 0.7)], r"entries\[1\].*low < high.*\(1.0, 0.8, 0.7\)"),
        ([(1.0, -0.1, 0.7)], r"entries\[0\]"),
        ([(1.0, 0.1, 1.5)], r"entries\[0\]"),
        ([(float("nan"), 0.1, 0.5)], r"entries\[0\]"),
        ([(-0.5, 0.1, 0.5)], r"entries\[0\]"),
        ([(1.0, "0.1", 0.5)], r"entries\[0\]"),
    ],
)
def test_schedule_validation(entries: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FilterSchedule(entries)  # type: ignore[arg-type]


@pytest.mark.parametrize("progress", [-0.1, float("nan"), float("inf"), "0.5", None])
def test_bad_progress(progress: object) -> None:
    with pytest.raises(ValueError, match="progress"):
        SLOW2FAST.bounds(progress)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "acc", [torch.tensor([0.5, 1.2]), torch.tensor([-0.1]), torch.tensor([float("nan")]), torch.ones(2, 2), [0.5]]
)
def test_bad_group_accuracy(acc: object) -> None:
    with pytest.raises(ValueError, match="group_accuracy"):
        SLOW2FAST.keep(acc, 0.1)  # type: ignore[arg-type]


def test_online_filter_accumulates_over_chunks_and_truncates() -> None:
    f = OnlineFilter(SLOW2FAST, 5, max_chunks=3)
    f.start(0.1)  # bounds 0.3 < acc < 0.99
    kept = f.add(torch.tensor([0.0, 0.5, 1.0, 0.75]), ["a0", "a1", "a2", "a3"])
    assert kept.tolist() == [False, True, False, True]
    assert (f.kept, f.done) == (2, False)
    f.add(torch.tensor([0.25, 0.3, 0.4]), ["b0", "b1", "b2"])
    assert (f.kept, f.done) == (3, False)
    f.add(torch.tensor([0.6, 0.9, 0.8, 0.1]), ["c0", "c1", "c2", "c3"])
    assert (f.kept, f.done) == (6, True)
    res = f.result()
    assert res.items == ["a1", "a3", "b2", "c0", "c1"]
    torch.testing.assert_close(res.group_accuracy, torch.tensor([0.5, 0.75, 0.4, 0.6, 0.9]), atol=0, rtol=0)
    m = f.metrics()
    assert (m["filter/low"], m["filter/high"]) == (0.3, 0.99)
    assert (m["filter/chunks"], m["filter/groups_seen"], m["filter/groups_kept"]) == (3, 11, 6)
    assert m["filter/kept_fraction"] == pytest.approx(6 / 11)


def test_online_filter_default_items_are_arrival_indices() -> None:
    f = OnlineFilter(DAPO, 3, max_chunks=4)
    f.start(0.9)
    f.add(torch.tensor([0.0, 0.5, 1.0, 0.75]))  # indices 0-3: keeps 1, 3
    f.add(torch.tensor([1.0, 0.0, 0.25]))  # indices 4-6: keeps 6
    assert f.result().items == [1, 3, 6]


def test_online_filter_uses_the_phase_of_its_progress() -> None:
    f = OnlineFilter(SLOW2FAST, 2, max_chunks=2)
    f.start(0.8)  # bounds 0.01 < acc < 0.7
    f.add(torch.tensor([0.2, 0.75, 0.5]), ["x", "y", "z"])
    assert f.result().items == ["x", "z"]


def test_start_resets_the_step() -> None:
    f = OnlineFilter(DAPO, 2, max_chunks=2)
    f.start(0.1)
    f.add(torch.tensor([0.5, 0.0]), ["old", "no"])
    f.start(0.2)
    f.add(torch.tensor([0.5, 0.25]), ["new0", "new1"])
    assert f.result().items == ["new0", "new1"]


def test_cap_raises_naming_bounds_progress_and_accuracies() -> None:
    f = OnlineFilter(SLOW2FAST, 4, max_chunks=2)
    f.start(0.1)
    f.add(torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(FilterExhausted) as info:
        f.add(torch.tensor([0.0, 0.2, 1.0, 0.5]))
    assert isinstance(info.value, RuntimeError)
    msg = str(info.value)
    for part in (
        "0.3 < acc < 0.99",
        "progress 0.1",
        "only 1 of 4 groups kept after 2 chunks",
        "max_chunks=2",
        "8 groups seen: 3 all-wrong (0), 3 all-right (1), 2 in between",
    ):
        assert part in msg, (part, msg)
    # Still over the cap: a further add raises again rather than looping on.
    with pytest.raises(FilterExhausted):
        f.add(torch.tensor([0.5]))


def test_cap_met_exactly_on_the_last_chunk_does_not_raise() -> None:
    f = OnlineFilter(DAPO, 2, max_chunks=2)
    f.start(0.0)
    f.add(torch.tensor([0.5, 0.0]))
    f.add(torch.tensor([1.0, 0.5]))
    assert f.done and f.result().items == [0, 3]


def test_misuse_raises() -> None:
    f = OnlineFilter(DAPO, 2, max_chunks=2)
    with pytest.raises(RuntimeError, match="start"):
        f.add(torch.tensor([0.5]))
    f.start(0.0)
    f.add(torch.tensor([0.5]))
    with pytest.raises(RuntimeError, match="1 of 2"):
        f.result()
    with pytest.raises(ValueError, match="items"):
        f.add(torch.tensor([0.5, 0.5]), ["one"])


@pytest.mark.parametrize(
    ("args", "kwargs", "name"),
    [
        ((SLOW2FAST, 0), dict(max_chunks=2), "target_groups"),
        ((SLOW2FAST, 4), dict(max_chunks=0), "max_chunks"),
        ((SLOW2FAST, 4.0), dict(max_chunks=2), "target_groups"),
        (([(1.0, 0.01, 0.99)], 4), dict(max_chunks=2), "schedule"),
    ],
)
def test_online_filter_validation(args: tuple, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        OnlineFilter(*args, **kwargs)


def _run_step(f: OnlineFilter, progress: float, chunks: list[list[float]]) -> list:
    f.start(progress)
    for acc in chunks:
        f.add(torch.tensor(acc))
        if f.done:
            break
    return f.result().items


def test_state_dict_round_trip_mid_run() -> None:
    f = OnlineFilter(SLOW2FAST, 2, max_chunks=3)
    _run_step(f, 0.0, [[0.0, 0.5], [1.0, 0.6]])
    _run_step(f, 0.25, [[0.4, 0.8, 0.9]])
    state = f.state_dict()
    # Step 1 (0.3 < acc < 0.99): keeps 0.5 then 0.6; step 2 keeps all three.
    assert state == {"steps": 2, "total_chunks": 3, "total_seen": 7, "total_kept": 5}

    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    g = OnlineFilter(SLOW2FAST, 2, max_chunks=3)
    g.load_state_dict(torch.load(buf, weights_only=True))
    assert g.state_dict() == state
    # The resumed filter and the original go on identically.
    chunks = [[0.0, 0.5], [0.0, 0.1, 0.8]]  # 0.01 < acc < 0.7 now: keeps arrivals 1 and 3
    assert _run_step(f, 0.75, chunks) == _run_step(g, 0.75, chunks) == [1, 3]
    assert f.state_dict() == g.state_dict() == {"steps": 3, "total_chunks": 5, "total_seen": 12, "total_kept": 7}
    assert f.metrics() == g.metrics()
    assert f.metrics()["filter/total_kept_fraction"] == pytest.approx(7 / 12)


@pytest.mark.parametrize(
    "state", [{"steps": 1}, {"steps": 1, "total_chunks": -1, "total_seen": 0, "total_kept": 0}, None]
)
def test_bad_state(state: object) -> None:
    with pytest.raises(ValueError, match="OnlineFilter state"):
        OnlineFilter(DAPO, 2, max_chunks=2).load_state_dict(state)  # type: ignore[arg-type]


def test_result_fill_tops_up_with_the_latest_rejected_groups() -> None:
    f = OnlineFilter(FilterSchedule([(1.0, 0.2, 0.8)]), 3, max_chunks=2)
    f.start(0.5)
    f.add(torch.tensor([0.5, 1.0, 0.0]), items=["a", "b", "c"])  # keeps a; rejects b, c
    with pytest.raises(FilterExhausted):
        f.add(torch.tensor([1.0, 0.0]), items=["d", "e"])  # rejects d, e: 1 of 3 kept
    out = f.result(fill=True)
    assert out.items == ["a", "d", "e"] and out.filled == 2
    assert out.group_accuracy.tolist() == [0.5, 1.0, 0.0]
    f.start(0.5)
    f.add(torch.tensor([0.5, 0.5, 0.5, 0.0]), items=["a", "b", "c", "d"])
    done = f.result(fill=True)  # a full step: nothing to top up
    assert done.items == ["a", "b", "c"] and done.filled == 0
