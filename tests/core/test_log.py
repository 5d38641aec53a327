"""RaftLog: the core's in-memory view of the log (everything after the
snapshot "base"). Unit tests for the index/term arithmetic §5.3 and §5.4.1
rely on: term lookups (including the base), slicing, contiguity, truncation
of a conflicting suffix, compaction and the up-to-date comparison."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from traft._core._log import RaftLog
from traft._types import Log


def entries(terms: Sequence[int], start: int = 1) -> list[Log]:
    """Entries ``start, start+1, ...`` with the given terms."""
    return [Log(index=start + k, term=t, data=f"{start + k}@{t}".encode())
            for k, t in enumerate(terms)]


def indexes(logs: Sequence[Log]) -> list[int]:
    return [e.index for e in logs]


# -- empty log and term lookups


def test_empty_log_has_index_and_term_zero() -> None:
    log = RaftLog()
    assert log.last_index == 0
    assert log.last_term == 0
    assert log.term(0) == 0
    assert log.term(1) is None
    assert log.slice(1, 10) == []


def test_term_lookup_for_each_entry_and_beyond_the_end() -> None:
    log = RaftLog(entries=entries([1, 1, 2, 3]))
    assert [log.term(i) for i in range(0, 6)] == [0, 1, 1, 2, 3, None]
    assert log.last_index == 4
    assert log.last_term == 3
    assert log.entry(3).term == 2


def test_term_lookup_at_and_below_the_snapshot_base() -> None:
    """The base (snapshot) index still has a known term; below it, nothing."""
    log = RaftLog(base_index=5, base_term=3, entries=entries([3, 4], start=6))
    assert log.term(5) == 3
    assert log.term(4) is None
    assert log.term(0) is None
    assert log.term(6) == 3
    assert log.term(7) == 4
    assert log.term(8) is None
    assert log.last_index == 7
    assert log.last_term == 4


def test_empty_log_after_snapshot_reports_the_base_as_last() -> None:
    log = RaftLog(base_index=10, base_term=4)
    assert log.last_index == 10
    assert log.last_term == 4
    assert log.term(10) == 4
    assert log.term(11) is None


def test_entry_raises_outside_the_in_memory_range() -> None:
    log = RaftLog(base_index=2, base_term=1, entries=entries([1, 2], start=3))
    assert log.entry(3).index == 3
    assert log.entry(4).index == 4
    for bad in (0, 1, 2, 5):
        with pytest.raises(IndexError):
            log.entry(bad)


# -- slices


def test_slice_is_inclusive_and_clamped_to_the_log() -> None:
    log = RaftLog(base_index=2, base_term=1, entries=entries([1, 2, 2, 3], start=3))
    assert indexes(log.slice(3, 6)) == [3, 4, 5, 6]
    assert indexes(log.slice(4, 5)) == [4, 5]
    assert indexes(log.slice(0, 4)) == [3, 4]  # below the base: clamped
    assert indexes(log.slice(5, 100)) == [5, 6]  # beyond the end: clamped
    assert log.slice(5, 4) == []
    assert log.slice(7, 9) == []


def test_slice_respects_max_count() -> None:
    log = RaftLog(entries=entries([1] * 10))
    assert indexes(log.slice(2, 10, max_count=3)) == [2, 3, 4]
    assert indexes(log.slice(9, 10, max_count=3)) == [9, 10]
    assert indexes(log.slice(1, 10, max_count=1)) == [1]
    assert log.slice(1, 10, max_count=0) == []


@given(base=st.integers(0, 5), n=st.integers(0, 12), lo=st.integers(-2, 20),
       hi=st.integers(-2, 20), max_count=st.none() | st.integers(0, 6))
def test_slice_matches_a_list_model(base: int, n: int, lo: int, hi: int,
                                    max_count: int | None) -> None:
    log = RaftLog(base_index=base, base_term=1, entries=entries([1] * n, start=base + 1))
    want = [i for i in range(base + 1, base + n + 1) if lo <= i <= hi]
    if max_count is not None:
        want = want[:max_count]
    assert indexes(log.slice(lo, hi, max_count)) == want


# -- append


def test_append_extends_contiguously() -> None:
    log = RaftLog(entries=entries([1]))
    log.append(entries([1, 2], start=2))
    assert log.last_index == 3
    assert log.last_term == 2
    log.append([])
    assert log.last_index == 3


@pytest.mark.parametrize("batch", [
    pytest.param(entries([1], start=3), id="gap"),
    pytest.param(entries([1], start=2), id="overlap"),
    pytest.param([*entries([1], start=4), *entries([1], start=6)], id="gap-inside-batch"),
])
def test_append_rejects_non_contiguous_entries_and_leaves_log_unchanged(batch: list[Log]) -> None:
    log = RaftLog(entries=entries([1, 1, 1]))
    with pytest.raises(ValueError):
        log.append(batch)
    assert log.last_index == 3
    assert indexes(log.slice(1, 10)) == [1, 2, 3]


def test_append_after_a_snapshot_base_must_start_right_after_it() -> None:
    log = RaftLog(base_index=5, base_term=2)
    with pytest.raises(ValueError):
        log.append(entries([2], start=5))
    log.append(entries([2], start=6))
    assert log.last_index == 6


def test_constructor_rejects_non_contiguous_entries() -> None:
    with pytest.raises(ValueError):
        RaftLog(base_index=3, base_term=1, entries=entries([1, 1], start=1))


# -- truncate


def test_truncate_drops_the_suffix_from_index() -> None:
    """§5.3: delete the conflicting entry and all that follow it."""
    log = RaftLog(entries=entries([1, 1, 2, 2, 3]))
    log.truncate_from(3)
    assert log.last_index == 2
    assert log.last_term == 1
    assert log.term(3) is None
    log.append(entries([4], start=3))
    assert [log.term(i) for i in (1, 2, 3)] == [1, 1, 4]


def test_truncate_beyond_the_end_is_a_no_op() -> None:
    log = RaftLog(entries=entries([1, 1]))
    log.truncate_from(5)
    assert log.last_index == 2


def test_truncate_everything_after_the_base() -> None:
    log = RaftLog(base_index=4, base_term=2, entries=entries([2, 3], start=5))
    log.truncate_from(5)
    assert log.last_index == 4
    assert log.last_term == 2


@pytest.mark.parametrize("index", [0, 3, 4])
def test_truncate_at_or_below_the_base_is_refused(index: int) -> None:
    log = RaftLog(base_index=4, base_term=2, entries=entries([2, 3], start=5))
    with pytest.raises(ValueError):
        log.truncate_from(index)
    assert log.last_index == 6


# -- compact


def test_compact_keeps_agreeing_entries_after_the_new_base() -> None:
    log = RaftLog(entries=entries([1, 1, 2, 2, 3]))
    log.compact(3, 2)
    assert (log.base_index, log.base_term) == (3, 2)
    assert log.term(3) == 2
    assert log.term(2) is None
    assert indexes(log.slice(0, 10)) == [4, 5]
    assert log.last_index == 5
    with pytest.raises(IndexError):
        log.entry(3)


def test_compact_with_a_disagreeing_term_drops_all_entries() -> None:
    """A snapshot whose last entry disagrees with ours replaces our log."""
    log = RaftLog(entries=entries([1, 1, 2, 2, 3]))
    log.compact(3, 5)
    assert (log.base_index, log.base_term) == (3, 5)
    assert log.last_index == 3
    assert log.last_term == 5
    assert log.slice(0, 10) == []


def test_compact_beyond_the_end_of_the_log() -> None:
    log = RaftLog(entries=entries([1, 1]))
    log.compact(7, 3)
    assert (log.base_index, log.base_term, log.last_index, log.last_term) == (7, 3, 7, 3)
    log.append(entries([3], start=8))
    assert log.last_index == 8


@pytest.mark.parametrize("index", [2, 4])
def test_compact_at_or_below_the_base_is_a_no_op(index: int) -> None:
    log = RaftLog(base_index=4, base_term=2, entries=entries([2, 3], start=5))
    log.compact(index, 9)
    assert (log.base_index, log.base_term) == (4, 2)
    assert log.last_index == 6


# -- §5.4.1 up-to-date comparison


@pytest.mark.parametrize(("last_index", "last_term", "expected"), [
    (3, 2, True),    # identical
    (4, 2, True),    # same term, longer
    (2, 2, False),   # same term, shorter
    (1, 3, True),    # higher last term wins even when shorter
    (9, 1, False),   # lower last term loses even when longer
    (0, 0, False),   # empty candidate log
])
def test_is_up_to_date_compares_last_term_then_length(last_index: int, last_term: int,
                                                      expected: bool) -> None:
    """§5.4.1: "If the logs have last entries with different terms, then the
    log with the later term is more up-to-date. If the logs end with the same
    term, then whichever log is longer is more up-to-date." """
    log = RaftLog(entries=entries([1, 1, 2]))
    assert log.is_up_to_date(last_index, last_term) is expected


def test_empty_log_considers_any_log_up_to_date() -> None:
    log = RaftLog()
    assert log.is_up_to_date(0, 0)
    assert log.is_up_to_date(5, 1)


def test_is_up_to_date_uses_the_snapshot_base_when_no_entries_remain() -> None:
    log = RaftLog(base_index=5, base_term=3)
    assert log.is_up_to_date(5, 3)
    assert not log.is_up_to_date(4, 3)
    assert not log.is_up_to_date(9, 2)


# -- first_index_of_term


def test_first_index_of_term_walks_back_over_the_whole_term() -> None:
    log = RaftLog(entries=entries([1, 1, 2, 2, 2, 3]))
    assert log.first_index_of_term(5) == 3
    assert log.first_index_of_term(4) == 3
    assert log.first_index_of_term(3) == 3
    assert log.first_index_of_term(6) == 6
    assert log.first_index_of_term(2) == 1


def test_first_index_of_term_stops_above_the_base() -> None:
    log = RaftLog(base_index=2, base_term=1, entries=entries([1, 1, 2], start=3))
    # Entries 3 and 4 are term 1, like the base, but the base is not "in" the log.
    assert log.first_index_of_term(4) == 3
    assert log.first_index_of_term(5) == 5
