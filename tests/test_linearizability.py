"""The key-value linearizability checker (traft.testing._linearizability)."""

from __future__ import annotations

import dataclasses
import random

import pytest

from traft.testing._linearizability import (
    History,
    Op,
    Operation,
    Status,
    check_linearizable,
)

OK, FAILED, UNKNOWN = Status.OK, Status.FAILED, Status.UNKNOWN


# -- hand-built operations ---------------------------------------------------


def put(client: int, key: str, value: bytes, start: float, end: float | None, status: Status = OK) -> Operation:
    return Operation(client=client, op=Op.PUT, key=key, value=value, invoke=start, complete=end, status=status)


def get(
    client: int, key: str, output: bytes | None, start: float, end: float | None, status: Status = OK
) -> Operation:
    return Operation(client=client, op=Op.GET, key=key, invoke=start, complete=end, status=status, output=output)


def cas(
    client: int,
    key: str,
    expected: bytes | None,
    new: bytes | None,
    start: float,
    end: float | None,
    ok: bool | None,
    status: Status = OK,
) -> Operation:
    return Operation(
        client=client,
        op=Op.CAS,
        key=key,
        value=new,
        expected=expected,
        invoke=start,
        complete=end,
        status=status,
        ok=ok,
    )


def delete(client: int, key: str, start: float, end: float | None, status: Status = OK) -> Operation:
    return Operation(client=client, op=Op.DELETE, key=key, invoke=start, complete=end, status=status)


# -- an independent brute-force reference ---------------------------------------


def _precedes(a: Operation, b: Operation) -> bool:
    """Real-time order, straight from the definition."""
    if a.status is not OK:
        return False  # UNKNOWN: completes at +infinity
    assert a.complete is not None
    if a.complete != b.invoke:
        return a.complete < b.invoke
    if a.complete_seq is not None and b.invoke_seq is not None:
        return a.complete_seq < b.invoke_seq
    return False  # equal timestamps without recording order: concurrent


def brute_force_linearizable(ops: list[Operation], initial: dict[str, bytes | None] | None = None) -> bool:
    """Try every order (no memo, no pruning, all keys at once)."""
    live = [op for op in ops if op.status is not FAILED]
    preds = [{j for j, a in enumerate(live) if j != i and _precedes(a, b)} for i, b in enumerate(live)]
    must = {i for i, op in enumerate(live) if op.status is OK}

    def search(placed: frozenset[int], state: dict[str, bytes | None]) -> bool:
        if must <= placed:
            return True
        for i, op in enumerate(live):
            if i in placed or not preds[i] <= placed:
                continue
            cur = state.get(op.key)
            new = dict(state)
            if op.op is Op.GET:
                if op.status is OK and op.output != cur:
                    continue
            elif op.op is Op.PUT:
                new[op.key] = op.value
            elif op.op is Op.DELETE:
                new[op.key] = None
            else:
                swaps = cur == op.expected
                if op.status is OK and swaps != op.ok:
                    continue
                if swaps:
                    new[op.key] = op.value
            if search(placed | {i}, new):
                return True
        return False

    return search(frozenset(), dict(initial or {}))


# -- histories generated from a real sequential execution ------------------------


def generate_history(
    rng: random.Random,
    n_ops: int,
    n_clients: int,
    keys: list[str],
    *,
    p_unknown: float = 0.05,
    p_failed: float = 0.05,
    values: list[bytes] | None = None,
    int_times: bool = False,
) -> list[Operation]:
    """Clients issue operations one at a time; each takes effect at a random
    point inside its interval (or, if UNKNOWN, at a random later point or
    never), and outputs come from executing them in that order."""
    cursor = [0.0] * n_clients
    planned: list[tuple[float | None, Operation]] = []
    written: dict[str, list[bytes | None]] = {k: [None] for k in keys}

    def t(x: float) -> float:
        return float(round(x)) if int_times else x

    for i in range(n_ops):
        c = rng.randrange(n_clients)
        key = rng.choice(keys)
        value = rng.choice(values) if values else f"v{i}".encode()
        kind = rng.choices([Op.PUT, Op.GET, Op.CAS, Op.DELETE], [35, 40, 15, 10])[0]
        invoke = t(cursor[c] + rng.uniform(0, 2))
        complete: float | None = t(invoke + rng.uniform(0, 6))
        assert complete is not None
        lin = rng.uniform(invoke, complete)
        roll = rng.random()
        status = FAILED if roll < p_failed else UNKNOWN if roll < p_failed + p_unknown else OK
        if status is FAILED:
            when: float | None = None
        elif status is UNKNOWN:
            when = invoke + rng.uniform(0, 40) if rng.random() < 0.5 else None
            complete = None
        else:
            when = lin
        cursor[c] = complete if complete is not None else invoke + rng.uniform(0, 3)
        if kind is Op.PUT:
            op = Operation(client=c, op=kind, key=key, value=value, invoke=invoke, complete=complete, status=status)
            written[key].append(value)
        elif kind is Op.GET:
            op = Operation(client=c, op=kind, key=key, invoke=invoke, complete=complete, status=status)
        elif kind is Op.DELETE:
            op = Operation(client=c, op=kind, key=key, invoke=invoke, complete=complete, status=status)
        else:
            expected = rng.choice(written[key])
            op = Operation(
                client=c,
                op=kind,
                key=key,
                value=value,
                expected=expected,
                invoke=invoke,
                complete=complete,
                status=status,
            )
            written[key].append(value)
        planned.append((when, op))

    state: dict[str, bytes | None] = {}
    outcome: dict[int, Operation] = {}
    order = sorted((w, i) for i, (w, _) in enumerate(planned) if w is not None)
    for _, i in order:
        op = planned[i][1]
        cur = state.get(op.key)
        if op.op is Op.GET:
            outcome[i] = dataclasses.replace(op, output=cur if op.status is OK else None)
        elif op.op is Op.PUT:
            state[op.key] = op.value
        elif op.op is Op.DELETE:
            state[op.key] = None
        else:
            swapped = cur == op.expected
            if swapped:
                state[op.key] = op.value
            if op.status is OK:
                outcome[i] = dataclasses.replace(op, ok=swapped)
    return [outcome.get(i, op) for i, (_, op) in enumerate(planned)]


def stale_read_mutation(ops: list[Operation]) -> tuple[int, bytes] | None:
    """A GET g, and a value Z written (uniquely) by a PUT q, such that q
    completed before some other write p was invoked and p completed before g
    was invoked: g reading Z can then never be linearized."""
    writes = [
        op
        for op in ops
        if op.status is OK and (op.op is Op.PUT or op.op is Op.DELETE or (op.op is Op.CAS and op.ok))
    ]
    for gi, g in enumerate(ops):
        if g.op is not Op.GET or g.status is not OK:
            continue
        for p in writes:
            if p.key != g.key or not _precedes(p, g):
                continue
            for q in writes:
                if q.op is Op.PUT and q.key == g.key and q.value != p.value and _precedes(q, p):
                    assert q.value is not None
                    return gi, q.value
    return None


# -- sequential and concurrent basics -----------------------------------------------


def test_sequential_history_of_puts_gets_and_deletes_is_linearizable() -> None:
    ops = [
        get(0, "a", None, 0, 1),
        put(0, "a", b"1", 2, 3),
        get(1, "a", b"1", 4, 5),
        put(1, "a", b"2", 6, 7),
        get(0, "a", b"2", 8, 9),
        delete(0, "a", 10, 11),
        get(1, "a", None, 12, 13),
    ]
    result = check_linearizable(ops)
    assert result.ok is True
    assert result
    assert result.key is None
    assert [i for i, _ in result.keys["a"].linearization] == list(range(7))


@pytest.mark.parametrize("seen", [b"old", b"new"])
def test_get_concurrent_with_put_may_see_either_value(seen: bytes) -> None:
    ops = [
        put(0, "k", b"old", 0, 1),
        put(0, "k", b"new", 2, 6),
        get(1, "k", seen, 3, 5),
    ]
    assert check_linearizable(ops).ok is True


def test_reads_of_absent_key_before_any_put_are_ok() -> None:
    ops = [get(0, "k", None, 0, 1), get(1, "k", None, 0.5, 2), put(0, "k", b"x", 3, 4), get(1, "k", b"x", 5, 6)]
    assert check_linearizable(ops).ok is True


def test_initial_values_are_respected() -> None:
    ops = [get(0, "k", b"seed", 0, 1)]
    assert check_linearizable(ops, initial={"k": b"seed"}).ok is True
    assert check_linearizable(ops).ok is False
    assert check_linearizable([get(0, "k", None, 0, 1)], initial={"k": b"seed"}).ok is False


def test_empty_history_is_linearizable() -> None:
    result = check_linearizable([])
    assert result.ok is True
    assert result.keys == {}


# -- violations ----------------------------------------------------------------


def test_stale_read_after_completed_put_is_not_linearizable() -> None:
    ops = [
        put(0, "k", b"1", 0, 1),
        put(0, "k", b"2", 2, 3),
        get(1, "k", b"1", 4, 5),  # put of b"2" completed at 3, before this read began
    ]
    result = check_linearizable(ops)
    assert result.ok is False
    assert not result
    assert result.key == "k"
    # the best prefix is the two puts; the stale read cannot follow it
    assert [i for i, _ in result.linearization] == [0, 1]
    assert [i for i, _ in result.unplaced] == [2]
    assert "#2" in result.explanation and "read b'1', but the register holds b'2'" in result.explanation


def test_read_your_writes_violation_is_not_linearizable() -> None:
    ops = [
        put(1, "k", b"other", 0, 1),
        put(0, "k", b"mine", 2, 3),
        get(0, "k", b"other", 4, 5),  # the same client no longer sees its own write
    ]
    result = check_linearizable(ops)
    assert result.ok is False
    assert result.key == "k"


def test_lost_acknowledged_write_is_not_linearizable() -> None:
    ops = [
        put(0, "k", b"v1", 0, 1),
        put(1, "k", b"v2", 2, 3),  # acknowledged ...
        get(2, "k", b"v1", 4, 5),  # ... but later reads only see the older value
        get(0, "k", b"v1", 6, 7),
    ]
    result = check_linearizable(ops)
    assert result.ok is False
    assert result.key == "k"


def test_value_out_of_nowhere_is_rejected() -> None:
    ops = [put(0, "k", b"1", 0, 1), get(1, "k", b"ghost", 0, 2)]
    result = check_linearizable(ops)
    assert result.ok is False
    assert result.key == "k"
    assert "b'ghost'" in result.explanation and "ever wrote" in result.explanation
    assert [i for i, _ in result.unplaced] == [1]


def test_reading_absent_after_acknowledged_put_is_rejected() -> None:
    ops = [put(0, "k", b"1", 0, 1), get(1, "k", None, 2, 3)]
    assert check_linearizable(ops).ok is False


def test_history_needing_two_reads_to_swap_order_is_rejected() -> None:
    # Two concurrent puts; one reader sees 2 then 1, another sees 1 then 2,
    # with all reads after both puts completed: no single order explains both.
    ops = [
        put(0, "k", b"1", 0, 2),
        put(1, "k", b"2", 0, 2),
        get(2, "k", b"2", 3, 4),
        get(2, "k", b"1", 5, 6),
        get(3, "k", b"1", 3, 4),
        get(3, "k", b"2", 5, 6),
    ]
    assert check_linearizable(ops).ok is False
    assert brute_force_linearizable(ops) is False


# -- UNKNOWN and FAILED ---------------------------------------------------------


def test_unknown_put_whose_value_later_appears_is_ok() -> None:
    ops = [
        put(0, "k", b"1", 0, 1),
        put(1, "k", b"maybe", 2, None, UNKNOWN),
        get(2, "k", b"1", 3, 4),
        get(2, "k", b"maybe", 50, 51),  # took effect long after the client gave up
        get(0, "k", b"maybe", 60, 61),
    ]
    assert check_linearizable(ops).ok is True


def test_unknown_put_that_never_appears_is_ok() -> None:
    ops = [
        put(0, "k", b"1", 0, 1),
        put(1, "k", b"lost", 2, 3, UNKNOWN),
        get(2, "k", b"1", 4, 5),
        get(0, "k", b"1", 60, 61),
    ]
    assert check_linearizable(ops).ok is True


def test_unknown_put_cannot_take_effect_before_its_invocation() -> None:
    ops = [
        get(0, "k", b"early", 0, 1),
        put(1, "k", b"early", 2, None, UNKNOWN),
    ]
    assert check_linearizable(ops).ok is False


def test_unknown_put_takes_effect_at_most_once() -> None:
    ops = [
        put(1, "k", b"x", 0, None, UNKNOWN),
        get(0, "k", b"x", 1, 2),
        put(0, "k", b"y", 3, 4),
        get(0, "k", b"x", 5, 6),  # would need the unknown put to apply again
    ]
    assert check_linearizable(ops).ok is False


def test_failed_put_whose_value_appears_is_not_linearizable() -> None:
    ops = [
        put(0, "k", b"1", 0, 1),
        put(1, "k", b"rejected", 2, 3, FAILED),
        get(2, "k", b"rejected", 4, 5),
    ]
    result = check_linearizable(ops)
    assert result.ok is False
    assert result.key == "k"
    assert "FAILED operation(s) #1" in result.explanation


def test_failed_operations_are_dropped() -> None:
    ops = [
        put(0, "k", b"1", 0, 1),
        put(1, "k", b"rejected", 2, 3, FAILED),
        get(2, "k", b"1", 4, 5),
    ]
    assert check_linearizable(ops).ok is True


def test_unknown_gets_are_unconstrained() -> None:
    ops = [put(0, "k", b"1", 0, 1), get(1, "k", None, 2, None, UNKNOWN)]
    assert check_linearizable(ops).ok is True


# -- compare-and-set -----------------------------------------------------------------


def test_cas_that_matches_succeeds_and_installs_new_value() -> None:
    ops = [
        put(0, "k", b"a", 0, 1),
        cas(0, "k", b"a", b"b", 2, 3, ok=True),
        get(1, "k", b"b", 4, 5),
    ]
    assert check_linearizable(ops).ok is True


def test_cas_reported_success_without_match_is_rejected() -> None:
    ops = [put(0, "k", b"a", 0, 1), cas(0, "k", b"z", b"b", 2, 3, ok=True)]
    assert check_linearizable(ops).ok is False
    ops = [put(0, "k", b"a", 0, 1), put(0, "k", b"z", 1.5, 1.8), cas(0, "k", b"z", b"b", 2, 3, ok=True)]
    assert check_linearizable(ops).ok is True


def test_cas_reported_failure_despite_match_is_rejected() -> None:
    ops = [put(0, "k", b"a", 0, 1), cas(0, "k", b"a", b"b", 2, 3, ok=False)]
    result = check_linearizable(ops)
    assert result.ok is False
    assert "it failed, but the register holds its expected value b'a'" in result.explanation


def test_failed_cas_leaves_the_value_unchanged() -> None:
    good = [put(0, "k", b"a", 0, 1), cas(0, "k", b"x", b"b", 2, 3, ok=False), get(1, "k", b"a", 4, 5)]
    bad = [put(0, "k", b"a", 0, 1), cas(0, "k", b"x", b"b", 2, 3, ok=False), get(1, "k", b"b", 4, 5)]
    assert check_linearizable(good).ok is True
    assert check_linearizable(bad).ok is False


def test_two_concurrent_cas_from_the_same_value_cannot_both_succeed() -> None:
    both = [
        put(0, "k", b"0", 0, 1),
        cas(1, "k", b"0", b"1", 2, 4, ok=True),
        cas(2, "k", b"0", b"2", 2, 4, ok=True),
    ]
    one = [
        put(0, "k", b"0", 0, 1),
        cas(1, "k", b"0", b"1", 2, 4, ok=True),
        cas(2, "k", b"0", b"2", 2, 4, ok=False),
        get(0, "k", b"1", 5, 6),
    ]
    assert check_linearizable(both).ok is False
    assert check_linearizable(one).ok is True


def test_cas_on_absent_key_and_cas_to_delete() -> None:
    ops = [
        cas(0, "k", None, b"x", 0, 1, ok=True),  # create if absent
        cas(1, "k", None, b"y", 2, 3, ok=False),  # no longer absent
        cas(0, "k", b"x", None, 4, 5, ok=True),  # compare-and-delete
        get(1, "k", None, 6, 7),
    ]
    assert check_linearizable(ops).ok is True


def test_unknown_cas_may_or_may_not_have_swapped() -> None:
    base = [put(0, "k", b"a", 0, 1), cas(1, "k", b"a", b"b", 2, None, ok=None, status=UNKNOWN)]
    assert check_linearizable([*base, get(0, "k", b"b", 10, 11)]).ok is True
    assert check_linearizable([*base, get(0, "k", b"a", 10, 11)]).ok is True
    # it cannot swap when the register does not hold its expected value
    base = [put(0, "k", b"z", 0, 1), cas(1, "k", b"a", b"b", 2, None, ok=None, status=UNKNOWN)]
    assert check_linearizable([*base, get(0, "k", b"b", 10, 11)]).ok is False


def test_unobserved_unknown_write_can_explain_a_failed_cas() -> None:
    # The unknown put's value is never read, but only it explains why the
    # CAS from "absent" failed: it must not be optimized away.
    ops = [
        put(1, "k", b"unseen", 0, None, UNKNOWN),
        cas(0, "k", None, b"y", 2, 3, ok=False),
    ]
    assert check_linearizable(ops).ok is True
    assert check_linearizable(ops[1:]).ok is False


def test_each_unseen_unknown_write_explains_at_most_one_blocked_cas() -> None:
    # Both CASes from "absent" failed although the key was absent before each
    # (a DELETE sits between them): each needs its own lost write.
    one = [
        put(1, "k", b"lost1", 0, None, UNKNOWN),
        cas(0, "k", None, b"y", 1, 2, ok=False),
        delete(0, "k", 3, 4),
        cas(0, "k", None, b"z", 5, 6, ok=False),
    ]
    two = [*one, put(2, "k", b"lost2", 0, None, UNKNOWN)]
    assert check_linearizable(one).ok is False
    assert check_linearizable(two).ok is True
    assert brute_force_linearizable(one) is False and brute_force_linearizable(two) is True


def test_unknown_write_is_not_available_before_its_invocation_to_a_failed_cas() -> None:
    ops = [
        cas(0, "k", None, b"y", 0, 1, ok=False),
        put(1, "k", b"lost", 2, None, UNKNOWN),  # invoked after the CAS completed
    ]
    assert check_linearizable(ops).ok is False


def test_chain_of_unknown_cas_operations() -> None:
    # Each UNKNOWN CAS can only swap after the previous one did.
    ops = [
        put(0, "k", b"a", 0, 1),
        cas(1, "k", b"a", b"b", 2, None, ok=None, status=UNKNOWN),
        cas(2, "k", b"b", b"c", 2, None, ok=None, status=UNKNOWN),
        get(0, "k", b"c", 5, 6),
    ]
    assert check_linearizable(ops).ok is True
    broken = [ops[0], ops[2], ops[3]]  # without the first step, c is unreachable
    assert check_linearizable(broken).ok is False


# -- per-key independence ------------------------------------------------------------


def test_violation_on_one_key_is_reported_with_that_key() -> None:
    ops = [
        put(0, "a", b"1", 0, 1),
        put(1, "b", b"1", 0, 1),
        get(0, "a", b"1", 2, 3),
        put(1, "b", b"2", 2, 3),
        get(2, "b", b"1", 4, 5),  # stale
        get(2, "a", b"1", 4, 5),
    ]
    result = check_linearizable(ops)
    assert result.ok is False
    assert result.key == "b"
    assert result.failed_keys == ("b",)
    assert result.keys["a"].ok is True
    assert "key 'b'" in result.explanation
    assert all(op.key == "b" for _, op in result.unplaced)


def test_operations_on_other_keys_do_not_constrain_a_key() -> None:
    # Interleaved in time with a key "b" that is busy; "a" alone is fine.
    ops = [put(0, "a", b"1", 0, 1), put(1, "b", b"1", 0.5, 5), get(0, "a", b"1", 2, 3), get(2, "b", None, 1, 2)]
    assert check_linearizable(ops).ok is True


# -- budget, explanation and recorder ----------------------------------------------


def test_exhausted_step_budget_gives_undecided_verdict() -> None:
    ops = generate_history(random.Random(7), 40, 4, ["k"])
    assert check_linearizable(ops).ok is True
    result = check_linearizable(ops, timeout_steps=5)
    assert result.ok is None
    assert not result
    assert result.undecided_keys == ("k",)
    assert result.key == "k"
    assert "undecided" in result.explanation and "5 steps" in result.explanation


def test_definite_violation_wins_over_undecided_key() -> None:
    ops = generate_history(random.Random(7), 40, 4, ["k"])
    big = check_linearizable(ops).steps
    ops += [put(0, "z", b"1", 0, 1), get(0, "z", None, 2, 3)]
    small = check_linearizable(ops[-2:]).keys["z"].steps
    assert small < big
    result = check_linearizable(ops, timeout_steps=small)
    assert result.ok is False
    assert result.key == "z"
    assert result.undecided_keys == ("k",)


def test_failure_explanation_shows_prefix_and_unplaced_operations() -> None:
    ops = [
        put(0, "k", b"1", 0, 1),
        put(1, "k", b"2", 2, 3),
        get(2, "k", b"1", 4, 6),
        get(3, "k", b"3", 5, 7, UNKNOWN),
        put(0, "k", b"3", 5, 8),
    ]
    result = check_linearizable(ops)
    assert result.ok is False
    text = result.explanation
    assert "a linearizable prefix of 2 operation(s) (longest found: 3), leaving 'k' = b'2'" in text
    assert "#0 client 0 PUT 'k' = b'1' [0, 1] OK" in text
    assert "#2 completed at 6" in text
    assert "#2 client 2 GET 'k' -> b'1' [4, 6] OK: it read b'1', but the register holds b'2'" in text
    # the put of b"3" was invoked before #2 completed, so it was a candidate too
    assert "#4 client 0 PUT 'k' = b'3' [5, 8] OK: it could take effect here" in text
    assert [i for i, _ in result.linearization] == [0, 1]
    assert {i for i, _ in result.unplaced} == {2, 4}


def test_check_is_deterministic() -> None:
    ops = generate_history(random.Random(3), 120, 5, ["a", "b"], p_unknown=0.1)
    first, second = check_linearizable(ops), check_linearizable(ops)
    assert first == second


def test_malformed_operations_are_rejected() -> None:
    with pytest.raises(ValueError, match="PUT needs a value"):
        check_linearizable([put(0, "k", None, 0, 1)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="before its invocation"):
        check_linearizable([put(0, "k", b"x", 2, 1)])
    with pytest.raises(ValueError, match="needs ok=True or ok=False"):
        check_linearizable([cas(0, "k", None, b"x", 0, 1, ok=None)])
    with pytest.raises(ValueError, match="status OK but no completion"):
        check_linearizable([get(0, "k", None, 0, None)])


def test_history_records_operations_with_ids_and_outcomes() -> None:
    h = History()
    a = h.invoke(0, Op.PUT, "k", b"1", at=0)
    b = h.invoke(1, Op.GET, "k", at=0.5)
    c = h.invoke(2, Op.CAS, "k", b"2", expected=b"1", at=0.5)
    d = h.invoke(3, Op.PUT, "k", b"9", at=0.6)  # never completed
    h.complete(a, OK, at=1)
    h.complete(b, OK, b"1", at=2)
    h.complete(c, OK, ok=True, at=3)
    assert (a, b, c, d) == (0, 1, 2, 3)
    ops = h.operations()
    assert len(h) == 4
    assert ops[1].output == b"1" and ops[1].complete == 2
    assert ops[2].ok is True
    assert ops[3].status is UNKNOWN and ops[3].complete is None
    assert check_linearizable(ops).ok is True


def test_history_rejects_misuse() -> None:
    h = History()
    a = h.invoke(0, Op.PUT, "k", b"1", at=5)
    with pytest.raises(ValueError, match="before the previous event"):
        h.invoke(0, Op.GET, "k", at=4)
    h.complete(a, OK, at=6)
    with pytest.raises(ValueError, match="already completed"):
        h.complete(a, OK, at=7)
    with pytest.raises(ValueError, match="no operation"):
        h.complete(42, OK, at=7)
    with pytest.raises(ValueError, match="takes no value"):
        h.invoke(0, Op.GET, "k", b"x", at=8)


def test_recording_order_breaks_timestamp_ties() -> None:
    # Under a mock clock a put can complete and a read start at the same
    # virtual instant; the recorded order says the read came after.
    h = History()
    p = h.invoke(0, Op.PUT, "k", b"1", at=0)
    h.complete(p, OK, at=0)
    r = h.invoke(1, Op.GET, "k", at=0)
    h.complete(r, OK, None, at=0)
    assert check_linearizable(h.operations()).ok is False
    # Hand-built with the same timestamps (no recording order): concurrent.
    ops = [put(0, "k", b"1", 0, 0), get(1, "k", None, 0, 0)]
    assert check_linearizable(ops).ok is True


def test_unknown_completion_time_is_ignored() -> None:
    h = History()
    p = h.invoke(0, Op.PUT, "k", b"late", at=0)
    h.complete(p, UNKNOWN, at=1)  # the client gave up at 1 ...
    r = h.invoke(1, Op.GET, "k", at=2)
    h.complete(r, OK, None, at=3)  # ... but it had not yet applied at 2-3
    r = h.invoke(1, Op.GET, "k", at=4)
    h.complete(r, OK, b"late", at=5)
    assert check_linearizable(h.operations()).ok is True


# -- randomized ----------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(40))
def test_histories_from_a_real_execution_are_linearizable(seed: int) -> None:
    rng = random.Random(seed)
    ops = generate_history(rng, rng.randrange(20, 120), rng.randrange(1, 6), ["a", "b", "c"], p_unknown=0.08)
    result = check_linearizable(ops)
    assert result.ok is True, result.explanation


@pytest.mark.parametrize("seed", range(40))
def test_never_written_read_value_makes_a_real_history_fail(seed: int) -> None:
    rng = random.Random(1000 + seed)
    ops = generate_history(rng, rng.randrange(20, 120), rng.randrange(1, 6), ["a", "b", "c"], p_unknown=0.08)
    reads = [i for i, op in enumerate(ops) if op.op is Op.GET and op.status is OK]
    assert reads
    i = rng.choice(reads)
    ops[i] = dataclasses.replace(ops[i], output=b"never-written")
    result = check_linearizable(ops)
    assert result.ok is False
    assert result.key == ops[i].key
    assert f"#{i} " in result.explanation


@pytest.mark.parametrize("seed", range(40))
def test_stale_read_mutation_makes_a_real_history_fail(seed: int) -> None:
    # Unlike a never-written value, this needs the search itself to fail.
    rng = random.Random(2000 + seed)
    while True:
        ops = generate_history(rng, 80, rng.randrange(2, 6), ["a", "b"], p_unknown=0.08)
        mutation = stale_read_mutation(ops)
        if mutation is not None:
            break
    i, stale = mutation
    ops[i] = dataclasses.replace(ops[i], output=stale)
    result = check_linearizable(ops)
    assert result.ok is False
    assert result.key == ops[i].key
    assert result.keys[ops[i].key].steps > 0  # decided by the search, not the value pre-check


def test_checker_agrees_with_brute_force_on_small_random_histories() -> None:
    rng = random.Random(12345)
    verdicts = {True: 0, False: 0}
    for case in range(1500):
        values = [b"1", b"2", b"3"]
        if case % 2:
            # a real execution, maybe with one output changed
            ops = generate_history(
                rng, rng.randrange(1, 8), rng.randrange(1, 4), ["a", "b"],
                p_unknown=0.2, p_failed=0.1, values=values, int_times=True,
            )
            reads = [i for i, op in enumerate(ops) if op.op is Op.GET and op.status is OK]
            if reads and rng.random() < 0.5:
                i = rng.choice(reads)
                ops[i] = dataclasses.replace(ops[i], output=rng.choice([None, *values]))
            cases = [i for i, op in enumerate(ops) if op.op is Op.CAS and op.status is OK]
            if cases and rng.random() < 0.3:
                i = rng.choice(cases)
                ops[i] = dataclasses.replace(ops[i], ok=not ops[i].ok)
        else:
            # arbitrary outputs
            ops = []
            for _ in range(rng.randrange(1, 7)):
                start = float(rng.randrange(0, 8))
                end = start + rng.randrange(0, 4)
                status = rng.choices([OK, UNKNOWN, FAILED], [70, 20, 10])[0]
                done = end if status is not UNKNOWN or rng.random() < 0.5 else None
                key = rng.choice(["a", "b"])
                c = rng.randrange(3)
                kind = rng.choice(list(Op))
                if kind is Op.PUT:
                    ops.append(put(c, key, rng.choice(values), start, done, status))
                elif kind is Op.GET:
                    ops.append(get(c, key, rng.choice([None, *values]) if status is OK else None, start, done, status))
                elif kind is Op.DELETE:
                    ops.append(delete(c, key, start, done, status))
                else:
                    ok = rng.random() < 0.5 if status is OK else None
                    ops.append(cas(c, key, rng.choice([None, *values]), rng.choice([None, *values]), start, done, ok, status))
        expected = brute_force_linearizable(ops)
        result = check_linearizable(ops)
        assert result.ok is expected, (case, ops, result.explanation)
        verdicts[expected] += 1
    assert verdicts[True] > 300 and verdicts[False] > 300


def test_checker_agrees_with_brute_force_on_cas_and_unknown_heavy_histories() -> None:
    rng = random.Random(54321)
    verdicts = {True: 0, False: 0}
    for case in range(1500):
        values = [str(i).encode() for i in range(1, rng.randrange(2, 8))]
        ops = []
        for _ in range(rng.randrange(1, 8)):
            start = float(rng.randrange(0, 8))
            end = start + rng.randrange(0, 3)
            status = rng.choices([OK, UNKNOWN, FAILED], [55, 40, 5])[0]
            done = None if status is UNKNOWN else end
            c = rng.randrange(4)
            kind = rng.choices(list(Op), [3, 3, 5, 1])[0]
            if kind is Op.PUT:
                ops.append(put(c, "k", rng.choice(values), start, done, status))
            elif kind is Op.GET:
                ops.append(get(c, "k", rng.choice([None, *values]) if status is OK else None, start, done, status))
            elif kind is Op.DELETE:
                ops.append(delete(c, "k", start, done, status))
            else:
                ok = rng.random() < 0.5 if status is OK else None
                ops.append(cas(c, "k", rng.choice([None, *values]), rng.choice([None, *values]), start, done, ok, status))
        expected = brute_force_linearizable(ops)
        assert check_linearizable(ops).ok is expected, (case, ops)
        verdicts[expected] += 1
    assert verdicts[True] > 500 and verdicts[False] > 500


def test_checker_agrees_with_brute_force_on_recorded_histories_with_ties() -> None:
    # Recorded through History with coarse timestamps: recording order decides ties.
    rng = random.Random(99)
    for _ in range(400):
        h = History()
        pending: list[tuple[int, Operation]] = []
        state: dict[str, bytes | None] = {}
        now = 0.0
        for _ in range(rng.randrange(1, 14)):
            if rng.random() < 0.3:
                now += 1
            if pending and rng.random() < 0.5:
                op_id, op = pending.pop(rng.randrange(len(pending)))
                status = rng.choices([OK, UNKNOWN, FAILED], [70, 15, 15])[0]
                out = rng.choice([None, state.get(op.key), b"1"]) if op.op is Op.GET and status is OK else None
                ok = rng.random() < 0.5 if op.op is Op.CAS and status is OK else None
                h.complete(op_id, status, out, ok=ok, at=now)
                if status is OK and op.op is Op.PUT:
                    state[op.key] = op.value
            elif len(pending) < 3:
                key = rng.choice(["a", "b"])
                kind = rng.choice([Op.PUT, Op.GET, Op.GET, Op.CAS])
                value = rng.choice([b"1", b"2"]) if kind is not Op.GET else None
                expected = rng.choice([None, b"1", b"2"]) if kind is Op.CAS else None
                op_id = h.invoke(rng.randrange(3), kind, key, value, expected, at=now)
                pending.append((op_id, h.operations()[op_id]))
        ops = h.operations()
        assert check_linearizable(ops).ok is brute_force_linearizable(ops), ops


# -- performance ------------------------------------------------------------------------


def test_three_hundred_operations_five_clients_five_keys_check_ok() -> None:
    ops = generate_history(random.Random(2024), 300, 5, ["k0", "k1", "k2", "k3", "k4"], p_unknown=0.05)
    assert len(ops) == 300
    result = check_linearizable(ops)
    assert result.ok is True, result.explanation
    assert sum(r.checked for r in result.keys.values()) > 250


def test_three_hundred_operations_on_one_key_check_ok() -> None:
    ops = generate_history(random.Random(77), 300, 5, ["k"], p_unknown=0.05)
    result = check_linearizable(ops)
    assert result.ok is True, result.explanation
