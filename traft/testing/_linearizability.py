"""A linearizability checker for client histories of a key-value register.

The search is Wing & Gong's, as improved by Lowe ("just-in-time
linearization") and used by Porcupine and Knossos:

* **P-compositionality.**  Linearizability is local, so the history is split
  by key and every key (one register) is checked on its own.
* **Minimal-call search.**  A key's invocation and completion events sit in a
  doubly linked list in real-time order.  The invocations before the first
  remaining completion belong to the operations that may take effect next
  (everything that completed before they were invoked is already placed).
  The search tries them depth first: if the register model accepts one (a GET
  must read the current value; a CAS must find, or not find, its expected
  value, as it reported), it is unlinked and the search goes on from the new
  list; running into a completion whose operation is unplaced is a dead end,
  and the search backtracks.  Once no completion is left, every completed
  operation has been placed: the history is linearizable.
* **Memoization.**  (placed operations as a bitmask, register value) decides
  the rest of the search, so each pair is explored once.

Some refinements, each of which keeps the verdict exact (the test suite checks
it against a brute-force search on hundreds of thousands of small histories):

* **Read-only operations go first.**  A GET or a failed CAS never changes the
  register, so if one is acceptable now it can be moved to the front of any
  linearization from here: it is placed without trying alternatives.
* **UNKNOWN operations** (timed out, leadership lost, never completed) have no
  completion: they may take effect any time after their invocation, or never.
  Moving such a write later, to just before the next operation that sees the
  value it wrote, or dropping it if no such operation comes before the next
  overwrite, leaves a valid linearization valid.  So the search places an
  UNKNOWN write only when it changes the value and a candidate could see the
  new one (a GET reading it, a CAS expecting it, or a failed CAS that the
  current value blocks), and then requires the next operation to be a GET or
  CAS.
* **Unobserved values.**  Values nothing reads or expects are
  indistinguishable, so they share one register value.  UNKNOWN PUTs/DELETEs
  of such values can only help a failed CAS and are interchangeable, so only
  the earliest invoked one is tried.  Without any failed CAS they are dropped.
* FAILED operations and UNKNOWN GETs are dropped.  A GET (or successful CAS)
  that saw a value no possibly-effective operation wrote fails at once.

The search is bounded by ``timeout_steps`` per key; past it the verdict for
that key is *undecided* (``ok is None``) instead of hanging.  Nothing here
reads a clock or module-level randomness: results are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from ._history import History, Op, Operation, Status

__all__ = [
    "DEFAULT_TIMEOUT_STEPS",
    "History",
    "KeyResult",
    "LinearizabilityResult",
    "Op",
    "Operation",
    "Status",
    "check_linearizable",
]

DEFAULT_TIMEOUT_STEPS = 5_000_000
"""Default search budget per key.  One step is one visit of an event entry;
a step costs well under a microsecond, so this is a few seconds at most.
Histories of a few hundred operations per key usually need thousands."""

_PUT, _GET, _CAS, _DELETE = 0, 1, 2, 3
_KIND = {Op.PUT: _PUT, Op.GET: _GET, Op.CAS: _CAS, Op.DELETE: _DELETE}
_PREFIX_SHOWN = 20
_UNOBSERVED = -1  # the register id of every value nothing reads or expects
_MAIN, _UNKNOWN, _TOKENS = 0, 1, 2  # event chains


@dataclass(frozen=True)
class KeyResult:
    """The verdict for one key.

    ``ok``: True (linearizable), False (not), None (undecided: the search
    budget ran out).  ``linearization`` is a witness order when ``ok`` is True
    (including the UNKNOWN operations it chose to apply).  When ``ok`` is
    False it is the linearizable prefix at the dead end that got furthest in
    real time (latest blocking completion; shortest prefix reaching it), and
    ``unplaced`` are the operations that could have come next after it, none
    of which leads to a full linearization.  Empty when undecided.
    Operations are paired with their index in the checked list.
    """

    key: str
    ok: bool | None
    steps: int
    checked: int
    """Operations that took part in the search (after dropping FAILED ones,
    UNKNOWN GETs and unobserved UNKNOWN writes)."""
    explanation: str
    linearization: tuple[tuple[int, Operation], ...] = ()
    unplaced: tuple[tuple[int, Operation], ...] = ()


@dataclass(frozen=True)
class LinearizabilityResult:
    """The verdict for a whole history.

    ``ok`` is explicitly three-valued:

    * ``True``: every key is linearizable;
    * ``False``: some key is not; ``key`` is the first such key (in sorted
      order) and ``explanation`` says why;
    * ``None``: no key failed, but the search budget ran out on ``key`` (and
      maybe others, see ``undecided_keys``): the history is too expensive to
      decide with this ``timeout_steps``.

    ``bool(result)`` is True only when ``ok is True``, so
    ``assert result, result.explanation`` is the idiomatic check.
    """

    ok: bool | None
    key: str | None
    explanation: str
    keys: Mapping[str, KeyResult] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.ok is True

    @property
    def failed_keys(self) -> tuple[str, ...]:
        return tuple(k for k, r in self.keys.items() if r.ok is False)

    @property
    def undecided_keys(self) -> tuple[str, ...]:
        return tuple(k for k, r in self.keys.items() if r.ok is None)

    @property
    def steps(self) -> int:
        return sum(r.steps for r in self.keys.values())

    @property
    def linearization(self) -> tuple[tuple[int, Operation], ...]:
        """For the failed key: the prefix at the furthest dead end (else empty;
        per-key witnesses are in ``keys[k].linearization``)."""
        return self.keys[self.key].linearization if self.key is not None else ()

    @property
    def unplaced(self) -> tuple[tuple[int, Operation], ...]:
        """For the failed key: the operations that could not come next."""
        return self.keys[self.key].unplaced if self.key is not None else ()


def check_linearizable(
    operations: Iterable[Operation],
    *,
    initial: Mapping[str, bytes | None] | None = None,
    timeout_steps: int = DEFAULT_TIMEOUT_STEPS,
) -> LinearizabilityResult:
    """Check a history of key-value register operations for linearizability.

    ``initial`` gives the value of keys before the history (absent: None).
    ``timeout_steps`` bounds the search per key; a key whose search exceeds it
    is undecided (see ``LinearizabilityResult.ok``).  Raises ``ValueError``
    for malformed operations.
    """
    if timeout_steps < 0:
        raise ValueError("timeout_steps must be >= 0")
    ops = list(operations)
    for i, op in enumerate(ops):
        try:
            op.validate()
        except ValueError as exc:
            raise ValueError(f"operation #{i} ({_describe(i, op)}): {exc}") from None
    kept = [(i, op) for i, op in enumerate(ops) if op.status is not Status.FAILED]
    # Recording order breaks timestamp ties only if every event has one.
    use_seq = all(
        op.invoke_seq is not None and (op.status is not Status.OK or op.complete_seq is not None)
        for _, op in kept
    )
    by_key: dict[str, list[tuple[int, Operation]]] = {}
    for i, op in kept:
        by_key.setdefault(op.key, []).append((i, op))
    failed_by_key: dict[str, list[tuple[int, Operation]]] = {}
    for i, op in enumerate(ops):
        if op.status is Status.FAILED:
            failed_by_key.setdefault(op.key, []).append((i, op))
    initial = initial or {}

    results: dict[str, KeyResult] = {}
    for key in sorted(by_key):
        results[key] = _check_key(
            key,
            by_key[key],
            initial.get(key),
            timeout_steps,
            use_seq,
            failed_by_key.get(key, []),
        )

    failed = [k for k, r in results.items() if r.ok is False]
    undecided = [k for k, r in results.items() if r.ok is None]
    n_ops = sum(r.checked for r in results.values())
    if failed:
        text = results[failed[0]].explanation
        if len(failed) > 1:
            text += "\n(also not linearizable: " + ", ".join(repr(k) for k in failed[1:]) + ")"
        if undecided:
            text += "\n(undecided within the step budget: " + ", ".join(repr(k) for k in undecided) + ")"
        return LinearizabilityResult(False, failed[0], text, results)
    if undecided:
        text = "\n".join(results[k].explanation for k in undecided)
        return LinearizabilityResult(None, undecided[0], text, results)
    steps = sum(r.steps for r in results.values())
    text = f"linearizable: {n_ops} operations on {len(results)} keys ({steps} search steps)"
    return LinearizabilityResult(True, None, text, results)


def _possible_values(
    items: Sequence[tuple[int, Operation]], initial_value: bytes | None
) -> set[bytes | None]:
    """Values the register could ever hold given the non-FAILED operations."""
    values: set[bytes | None] = {initial_value}
    for _, op in items:
        if op.op is Op.PUT or op.op is Op.CAS:
            values.add(op.value)
        elif op.op is Op.DELETE:
            values.add(None)
    return values


def _check_key(
    key: str,
    items: list[tuple[int, Operation]],
    initial_value: bytes | None,
    budget: int,
    use_seq: bool,
    failed_ops: list[tuple[int, Operation]],
) -> KeyResult:
    # -- impossible values: fail without searching -------------------------
    possible = _possible_values(items, initial_value)
    for i, op in items:
        if op.status is not Status.OK:
            continue
        seen: bytes | None
        if op.op is Op.GET:
            seen, what = op.output, "read"
        elif op.op is Op.CAS and op.ok:
            seen, what = op.expected, "succeeded expecting"
        else:
            continue
        if seen in possible:
            continue
        writers = [j for j, f in failed_ops if f.op is not Op.GET and _written(f) == seen]
        note = (
            f"; it was only written by FAILED operation(s) {', '.join(f'#{j}' for j in writers)}, "
            "which did not take effect"
            if writers
            else ""
        )
        text = (
            f"key {key!r} is not linearizable: {_describe(i, op)} {what} {_fmt(seen)}, a value that "
            f"no operation that may have taken effect ever wrote (initial value {_fmt(initial_value)}){note}"
        )
        return KeyResult(key, False, 0, len(items), text, (), ((i, op),))

    # -- drop operations that cannot matter ----------------------------------
    # Only values something looks at (read by a GET, expected by a CAS) are
    # told apart; every other value behaves the same ("unobserved").
    observed: set[bytes | None] = set()
    for _, op in items:
        if op.op is Op.GET and op.status is Status.OK:
            observed.add(op.output)
        elif op.op is Op.CAS:
            observed.add(op.expected)
    has_failed_cas = any(op.op is Op.CAS and op.status is Status.OK and op.ok is False for _, op in items)
    ops: list[tuple[int, Operation]] = []
    for i, op in items:
        if op.status is Status.UNKNOWN:
            if op.op is Op.GET:
                continue  # no effect, unconstrained output
            if not has_failed_cas and _written(op) not in observed:
                continue  # nothing ever sees what it wrote: leaving it out is as good
        ops.append((i, op))
    n = len(ops)

    # Register values as small ints: observed values get ids >= 0, all
    # unobserved values share _UNOBSERVED.  The model only compares the
    # register with observed values, so this loses nothing.
    ids = {v: k for k, v in enumerate(sorted(observed, key=lambda v: (v is not None, v or b"")))}
    kind = [_KIND[op.op] for _, op in ops]
    definite = [op.status is Status.OK for _, op in ops]
    swapped = [bool(op.ok) for _, op in ops]
    writes = [ids.get(_written(op), _UNOBSERVED) for _, op in ops]  # value a PUT/DELETE/CAS writes
    wants = [  # value a GET read / a CAS expects (always observed)
        ids[op.output] if op.op is Op.GET else ids[op.expected] if op.op is Op.CAS else _UNOBSERVED
        for _, op in ops
    ]

    # -- events in real-time order, as doubly linked lists -----------------
    # Entries are positions in the sorted event list, in three chains: the
    # calls and completions of completed operations; the calls of UNKNOWN
    # operations (which never complete); and the calls of UNKNOWN PUTs and
    # DELETEs whose value is unobserved ("tokens": interchangeable, so only the
    # earliest one available is ever tried).
    events: list[tuple[tuple[float, int, int, int], int, bool]] = []
    for o, (_, op) in enumerate(ops):
        if use_seq:
            assert op.invoke_seq is not None
            events.append(((op.invoke, op.invoke_seq, 0, o), o, True))
            if definite[o]:
                assert op.complete is not None and op.complete_seq is not None
                events.append(((op.complete, op.complete_seq, 1, o), o, False))
        else:
            # Equal timestamps are concurrent: invocations sort before completions.
            events.append(((op.invoke, 0, 0, o), o, True))
            if definite[o]:
                assert op.complete is not None
                events.append(((op.complete, 0, 1, o), o, False))
    events.sort(key=lambda e: e[0])
    n_events = len(events)
    entry_op = [e[1] for e in events]
    entry_is_call = [e[2] for e in events]
    call_pos = [0] * n
    ret_pos = [-1] * n
    for pos, (_, o, is_call) in enumerate(events):
        if is_call:
            call_pos[o] = pos
        else:
            ret_pos[o] = pos

    def chain(o: int) -> int:
        if definite[o]:
            return _MAIN
        if kind[o] != _CAS and writes[o] == _UNOBSERVED:
            return _TOKENS
        return _UNKNOWN

    head, tail, uhead, utail, thead, ttail = range(n_events, n_events + 6)
    chain_of = [chain(o) for o in entry_op] + [_MAIN, _MAIN, _UNKNOWN, _UNKNOWN, _TOKENS, _TOKENS]
    nxt = [0] * (n_events + 6)
    prv = [0] * (n_events + 6)
    for first, last, which in ((head, tail, _MAIN), (uhead, utail, _UNKNOWN), (thead, ttail, _TOKENS)):
        prev = first
        for pos in range(n_events):
            if chain_of[pos] == which:
                nxt[prev], prv[pos] = pos, prev
                prev = pos
        nxt[prev], prv[last] = last, prev
        nxt[last], prv[first] = last, first
    # UNKNOWN CASes observe values too (and then write their own): for each
    # value, the UNKNOWN CASes expecting it, by invocation.
    unknown_cas_by_want: dict[int, list[int]] = {}
    for o in sorted(range(n), key=lambda o: call_pos[o]):
        if kind[o] == _CAS and not definite[o]:
            unknown_cas_by_want.setdefault(wants[o], []).append(o)

    def could_be_seen(v: int, wanted: set[int], blocked_cas: bool, first_ret: int, used: int) -> bool:
        """Could the next candidate(s) see value ``v``: a GET or CAS among the
        completed candidates (``wanted``, or any value if a failed CAS is
        blocked), or an unplaced UNKNOWN CAS (not in bitmask ``used``)
        expecting ``v`` whose own new value could be seen in turn?"""
        if v in wanted or blocked_cas:
            return True
        for c in unknown_cas_by_want.get(v, ()):
            if call_pos[c] > first_ret:
                break
            if not used >> c & 1 and writes[c] != v:
                if could_be_seen(writes[c], wanted, blocked_cas, first_ret, used | (1 << c)):
                    return True
        return False

    # -- the search -------------------------------------------------------
    def accepts(o: int, state: int) -> tuple[bool, int]:
        """The register model: may ``o`` take effect now, and the new value."""
        k = kind[o]
        if k == _GET:
            return state == wants[o], state
        if k != _CAS:
            return True, writes[o]
        if definite[o] and not swapped[o]:
            return state != wants[o], state
        return state == wants[o], writes[o]  # a definite swap, or an UNKNOWN CAS that swaps

    # Read-only operations never change the register, so if one is acceptable
    # now it can be moved to the front of any linearization from here: place
    # it without trying alternatives (a "forced" frame).
    readonly = [
        kind[o] == _GET or (definite[o] and kind[o] == _CAS and (not swapped[o] or writes[o] == wants[o]))
        for o in range(n)
    ]
    initial_id = ids.get(initial_value, _UNOBSERVED)
    state = initial_id
    # ``pending``: the last placed operation was an UNKNOWN write, so the next
    # one must be able to see its value (a GET or a CAS; see module docs).
    pending = False
    linearized = 0
    stack: list[tuple[int, int, bool, bool]] = []  # (call entry, state, pending before it, forced)
    seen_states: set[tuple[int, int, bool]] = set()
    # Per node (indexed by depth), from its scan: the first completion in the
    # main chain (only calls before it are candidates), the values candidates
    # could observe, and whether a failed CAS among them is blocked by the
    # current value.  An UNKNOWN write is only placed if the next operation
    # could see it.
    node_at: list[tuple[int, set[int], bool]] = [(-1, set(), False)] * (n + 1)
    # The dead end that got furthest: latest blocking completion, then the
    # shortest prefix reaching it (so every candidate at that point shows).
    best_rank = (-1, 0)
    best: list[int] = []
    best_deadline = -1
    max_depth = 0
    steps = 0
    fresh = -1  # ``entry`` value meaning: a node just entered, not yet scanned
    entry = fresh
    verdict: bool | None = None
    while verdict is None:
        if steps > budget:
            break
        dead = False
        if entry == fresh:
            # Scan the completed operations' candidates (calls before the
            # first completion): place an acceptable read-only one if any, and
            # note what the candidates could observe.  Reaching the end means
            # every completed operation has been placed.
            e = nxt[head]
            forced = -1
            wanted: set[int] = set()
            blocked_cas = False
            while e != tail and entry_is_call[e]:
                steps += 1
                o = entry_op[e]
                if readonly[o] and accepts(o, state)[0]:
                    forced = e
                    break
                if kind[o] == _GET or swapped[o]:
                    wanted.add(wants[o])
                elif kind[o] == _CAS:
                    blocked_cas = True  # a failed CAS, not acceptable: the value equals its expected
                e = nxt[e]
            if e == tail:
                verdict = True
                break
            if forced >= 0:
                o = entry_op[forced]
                bits = linearized | (1 << o)
                memo = (bits, state, False)
                if memo in seen_states:
                    dead = True  # explored before, and it failed
                else:
                    seen_states.add(memo)
                    stack.append((forced, state, pending, True))
                    linearized = bits
                    pending = False
                    _lift(nxt, prv, forced, ret_pos[o])
                    max_depth = max(max_depth, len(stack))
                    continue
            else:
                node_at[len(stack)] = (e, wanted, blocked_cas)
                entry = nxt[head]
        if not dead:
            steps += 1
            first_ret, wanted, blocked_cas = node_at[len(stack)]
            which = chain_of[entry]
            if entry == first_ret:
                entry = nxt[uhead]  # done with completed operations; now UNKNOWN ones
                continue
            if which == _UNKNOWN and entry > first_ret:  # (utail is > first_ret too)
                entry = nxt[thead]  # and finally the earliest token
                continue
            if which != _TOKENS:
                o = entry_op[entry]
                # Read-only candidates were not acceptable at this node (the
                # scan found none); while ``pending``, a PUT/DELETE would
                # overwrite the UNKNOWN write before anything saw it.
                if not readonly[o] and not (pending and kind[o] != _CAS):
                    allowed, new_state = accepts(o, state)
                    if allowed and not definite[o]:
                        # An UNKNOWN write is only worth it if it changes the
                        # value and the next operation could see the new one.
                        allowed = new_state != state and could_be_seen(
                            new_state, wanted, blocked_cas, first_ret, linearized | (1 << o)
                        )
                    if allowed:
                        new_pending = not definite[o]
                        bits = linearized | (1 << o)
                        memo = (bits, new_state, new_pending)
                        if memo not in seen_states:
                            seen_states.add(memo)
                            stack.append((entry, state, pending, False))
                            state = new_state
                            pending = new_pending
                            linearized = bits
                            _lift(nxt, prv, entry, ret_pos[o])
                            max_depth = max(max_depth, len(stack))
                            entry = fresh
                            continue
                entry = nxt[entry]
                continue
            # A token is only useful to unblock a failed CAS, and only the
            # earliest available one is tried (any other would do the same).
            if (
                entry == nxt[thead]
                and entry < first_ret  # (ttail is not)
                and blocked_cas
                and not pending
                and state != _UNOBSERVED
            ):
                o = entry_op[entry]
                bits = linearized | (1 << o)
                memo = (bits, _UNOBSERVED, True)
                if memo not in seen_states:
                    seen_states.add(memo)
                    stack.append((entry, state, pending, False))
                    state = _UNOBSERVED
                    pending = True
                    linearized = bits
                    _lift(nxt, prv, entry, -1)
                    max_depth = max(max_depth, len(stack))
                    entry = fresh
                    continue
            # Every candidate failed: the completion ``first_ret`` cannot be
            # reached with its operation unplaced.  A dead end.
            rank = (first_ret, -len(stack))
            if not pending and rank > best_rank:
                best_rank = rank
                best = [entry_op[e] for e, _, _, _ in stack]
                best_deadline = entry_op[first_ret]
        # Backtrack past forced frames to the last real choice, and try the
        # next candidate after it.
        while True:
            if not stack:
                verdict = False
                break
            e, state, pending, was_forced = stack.pop()
            o = entry_op[e]
            linearized &= ~(1 << o)
            _unlift(nxt, prv, e, ret_pos[o])
            if not was_forced:
                entry = nxt[e]
                break

    if verdict is True:
        witness = tuple(ops[entry_op[e]] for e, _, _, _ in stack)
        text = f"key {key!r}: linearizable ({n} operations, {steps} search steps)"
        return KeyResult(key, True, steps, n, text, witness)
    if verdict is None:
        text = (
            f"key {key!r}: undecided: the search budget of {budget} steps ran out "
            f"({n} operations; longest linearizable prefix found: {max_depth})"
        )
        return KeyResult(key, None, budget, n, text)

    # -- explain the failure from the furthest dead end -------------------
    best_state = _replay([ops[o][1] for o in best], initial_value)
    placed = set(best)
    remaining = [o for o in range(n) if o not in placed]
    deadline = best_deadline
    window = sorted((o for o in remaining if call_pos[o] < ret_pos[deadline]), key=lambda o: call_pos[o])
    lines = [f"key {key!r} is not linearizable ({n} operations, {steps} search steps)."]
    lines.append(
        f"Furthest the search got: a linearizable prefix of {len(best)} operation(s) "
        f"(longest found: {max_depth}), leaving {key!r} = {_fmt(best_state)}"
        + (":" if best else " (the initial value).")
    )
    if len(best) > _PREFIX_SHOWN:
        lines.append(f"  ... {len(best) - _PREFIX_SHOWN} earlier operation(s)")
    for o in best[-_PREFIX_SHOWN:]:
        lines.append("  " + _describe(*ops[o]))
    d_i, d_op = ops[deadline]
    lines.append(
        f"No operation can come next: #{d_i} completed at {d_op.complete:g}, so it or an operation "
        "invoked before then must take effect next, and none of these leads to a linearization:"
    )
    for o in window:
        lines.append(f"  {_describe(*ops[o])}: {_why_not(ops[o][1], best_state)}")
    return KeyResult(key, False, steps, n, "\n".join(lines), tuple(ops[o] for o in best), tuple(ops[o] for o in window))


def _written(op: Operation) -> bytes | None:
    """The value a PUT, DELETE or (swapping) CAS leaves in the register."""
    return None if op.op is Op.DELETE else op.value


def _replay(order: Sequence[Operation], initial_value: bytes | None) -> bytes | None:
    """The register value after a linearizable sequence (CASes in it swapped
    unless they are known to have failed)."""
    state = initial_value
    for op in order:
        if op.op is Op.PUT or op.op is Op.DELETE or (op.op is Op.CAS and op.ok is not False):
            state = _written(op)
    return state


def _lift(nxt: list[int], prv: list[int], call: int, ret: int) -> None:
    """Unlink an operation's call entry and (if it has one) its completion."""
    nxt[prv[call]] = nxt[call]
    prv[nxt[call]] = prv[call]
    if ret >= 0:
        nxt[prv[ret]] = nxt[ret]
        prv[nxt[ret]] = prv[ret]


def _unlift(nxt: list[int], prv: list[int], call: int, ret: int) -> None:
    """Undo ``_lift`` (the unlinked entries still know their neighbours)."""
    if ret >= 0:
        nxt[prv[ret]] = ret
        prv[nxt[ret]] = ret
    nxt[prv[call]] = call
    prv[nxt[call]] = call


def _why_not(op: Operation, state: bytes | None) -> str:
    if op.status is Status.OK:
        if op.op is Op.GET and op.output != state:
            return f"it read {_fmt(op.output)}, but the register holds {_fmt(state)}"
        if op.op is Op.CAS and op.ok and op.expected != state:
            return f"it succeeded expecting {_fmt(op.expected)}, but the register holds {_fmt(state)}"
        if op.op is Op.CAS and not op.ok and op.expected == state:
            return f"it failed, but the register holds its expected value {_fmt(state)}"
    return "it could take effect here, but every continuation is a dead end"


def _fmt(v: bytes | None) -> str:
    return "None (absent)" if v is None else repr(v)


def _describe(index: int, op: Operation) -> str:
    if op.op is Op.PUT:
        what = f"PUT {op.key!r} = {op.value!r}"
    elif op.op is Op.DELETE:
        what = f"DELETE {op.key!r}"
    elif op.op is Op.GET:
        what = f"GET {op.key!r}" + (f" -> {_fmt(op.output)}" if op.status is Status.OK else "")
    else:
        what = f"CAS {op.key!r} {_fmt(op.expected)} => {_fmt(op.value)}"
        if op.status is Status.OK:
            what += " (swapped)" if op.ok else " (not swapped)"
    end = "?" if op.status is not Status.OK or op.complete is None else f"{op.complete:g}"
    if op.status is Status.UNKNOWN:
        end = "inf"
    return f"#{index} client {op.client} {what} [{op.invoke:g}, {end}] {op.status.name}"

