"""Client histories of a key-value register, for linearizability checks.

A simulation test records every client request as an *invocation* (when the
client sent it) and a *completion* (when the client learned the outcome)::

    op_id = history.invoke(client, Op.PUT, "k", b"v", at=trio.current_time())
    try:
        await node.apply(encode_put("k", b"v"), timeout=1)
    except NotLeaderError:          # rejected before dispatch: no effect
        history.complete(op_id, Status.FAILED, at=trio.current_time())
    except (trio.TooSlowError, LeadershipLostError):   # may or may not apply
        history.complete(op_id, Status.UNKNOWN, at=trio.current_time())
    else:
        history.complete(op_id, Status.OK, at=trio.current_time())

and then asserts ``check_linearizable(history.operations())``.

Timestamps are whatever clock the test runs on (``trio.current_time()`` under
``MockClock`` is ideal).  Under a mock clock many events share one virtual
instant, so ``History`` also numbers events in the order they were recorded:
a completion recorded before an invocation at the same timestamp really did
happen first, and the checker uses that order to break timestamp ties.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass

__all__ = ["History", "Op", "Operation", "Status"]


class Op(enum.Enum):
    """The register operations of the key-value model."""

    PUT = "put"
    """Set ``key`` to ``value`` (which must not be None)."""
    GET = "get"
    """Read ``key``; ``output`` is the value read (None: key absent)."""
    CAS = "cas"
    """If ``key`` holds ``expected`` (None: absent), set it to ``value``
    (None: delete it).  ``ok`` says whether the swap happened."""
    DELETE = "delete"
    """Remove ``key`` (it then reads as None)."""


class Status(enum.Enum):
    """How an operation ended, as far as the client knows."""

    OK = "ok"
    """Completed; ``output`` / ``ok`` are what the client observed."""
    FAILED = "failed"
    """Definitely did not take effect (e.g. ``NotLeaderError`` before the
    command was dispatched).  The checker drops it from the history."""
    UNKNOWN = "unknown"
    """May or may not have taken effect (timeout, ``LeadershipLostError``,
    never completed).  The checker may linearize it anywhere after its
    invocation, or not at all; its completion time counts as +infinity and
    its ``output`` / ``ok`` are ignored."""


@dataclass(frozen=True, kw_only=True)
class Operation:
    """One client request on the key-value register model.

    ``value`` is the value written by PUT and the new value of CAS;
    ``expected`` is the value CAS compares against.  ``output`` is the value a
    GET read (only meaningful when ``status`` is OK; must be None for other
    ops).  ``ok`` is whether a CAS swapped (required for an OK CAS; must be
    None for other ops).

    ``invoke_seq`` / ``complete_seq`` are recording positions assigned by
    ``History``; they break ties between equal timestamps (an event recorded
    earlier happened earlier).  Leave them None for hand-built histories:
    equal timestamps then count as concurrent.
    """

    client: int
    op: Op
    key: str
    value: bytes | None = None
    expected: bytes | None = None
    invoke: float
    complete: float | None
    status: Status
    output: bytes | None = None
    ok: bool | None = None
    invoke_seq: int | None = None
    complete_seq: int | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` if the fields are inconsistent."""
        if math.isnan(self.invoke):
            raise ValueError("invoke time is NaN")
        if self.complete is not None:
            if math.isnan(self.complete):
                raise ValueError("complete time is NaN")
            if self.complete < self.invoke:
                raise ValueError(f"completes at {self.complete} before its invocation at {self.invoke}")
        if self.status is Status.OK and self.complete is None:
            raise ValueError("status OK but no completion time")
        _validate_call(self.op, self.value, self.expected)
        if self.output is not None and self.op is not Op.GET:
            raise ValueError(f"{self.op.name} has no output (output is for GET)")
        if self.ok is not None and self.op is not Op.CAS:
            raise ValueError(f"{self.op.name} has no ok flag (ok is for CAS)")
        if self.op is Op.CAS and self.status is Status.OK and self.ok is None:
            raise ValueError("a completed (OK) CAS needs ok=True or ok=False")


def _validate_call(op: Op, value: bytes | None, expected: bytes | None) -> None:
    if op is Op.PUT and value is None:
        raise ValueError("PUT needs a value (use DELETE to remove a key)")
    if op in (Op.GET, Op.DELETE) and value is not None:
        raise ValueError(f"{op.name} takes no value")
    if op is not Op.CAS and expected is not None:
        raise ValueError(f"{op.name} takes no expected value (expected is for CAS)")


class History:
    """Records invocations and completions; ``operations()`` gives the
    history for ``check_linearizable``.

    Operation ids are positions in ``operations()``.  Timestamps must not go
    backwards across calls (true of any Trio clock).  An operation that is
    never completed is reported with status UNKNOWN.
    """

    def __init__(self) -> None:
        self._ops: list[Operation] = []
        self._seq = 0
        self._last_at = -math.inf

    def _tick(self, at: float) -> int:
        if math.isnan(at):
            raise ValueError("timestamp is NaN")
        if at < self._last_at:
            raise ValueError(f"timestamp {at} is before the previous event at {self._last_at}")
        self._last_at = at
        self._seq += 1
        return self._seq

    def invoke(
        self,
        client: int,
        op: Op,
        key: str,
        value: bytes | None = None,
        expected: bytes | None = None,
        *,
        at: float,
    ) -> int:
        """Record that ``client`` sent a request at time ``at``; returns its id."""
        _validate_call(op, value, expected)
        seq = self._tick(at)
        self._ops.append(
            Operation(
                client=client,
                op=op,
                key=key,
                value=value,
                expected=expected,
                invoke=at,
                complete=None,
                status=Status.UNKNOWN,
                invoke_seq=seq,
            )
        )
        return len(self._ops) - 1

    def complete(
        self,
        op_id: int,
        status: Status,
        output: bytes | None = None,
        *,
        ok: bool | None = None,
        at: float,
    ) -> None:
        """Record the outcome of operation ``op_id`` at time ``at``.

        ``output`` is the value a GET read; ``ok`` whether a CAS swapped.
        Completing with UNKNOWN records when the client gave up; the checker
        still treats the operation as possibly taking effect at any later time.
        """
        if not 0 <= op_id < len(self._ops):
            raise ValueError(f"no operation with id {op_id}")
        pending = self._ops[op_id]
        if pending.complete_seq is not None:
            raise ValueError(f"operation {op_id} was already completed")
        done = dataclasses.replace(pending, complete=at, status=status, output=output, ok=ok)
        done.validate()
        done = dataclasses.replace(done, complete_seq=self._tick(at))
        self._ops[op_id] = done

    def operations(self) -> list[Operation]:
        """All recorded operations, in invocation order (index = op id)."""
        return list(self._ops)

    def __len__(self) -> int:
        return len(self._ops)
