"""What a call that failed on a lost or demoted node means, decided once for the sync and the
asyncio connections (DESIGN.md, "Failure semantics"): the situation `outcome.decide` is asked
about, what the connection does before it answers, and the answer. The connections only do
the I/O around these: they let go of a driver connection, reconnect, emit, raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from aurora_smartdriver import outcome
from aurora_smartdriver.outcome import Call, Transaction

__all__ = [
    "Answer",
    "Step",
    "answer",
    "lost",
    "next_step",
    "short",
    "situation",
    "tell",
    "unreachable",
]

Step = Literal["stay", "detach", "attach", "fail_over", "answer"]
"""What the connection does before it answers (see `next_step`)."""


def short(exc: BaseException) -> str:
    """An error in one line, for the library's messages."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def lost(instance: str, exc: BaseException) -> str:
    return f"the connection to {instance} was lost ({short(exc)})"


def _what(call: Call) -> str:
    if call == "commit":
        return "during COMMIT"
    return "while a statement that may have committed was running"


def situation(
    call: Call,
    facts: tuple[Transaction, bool] | None,
    *,
    interrupted: bool,
    query: Any,
    engine: str,
    retry_reads: bool,
    refused: bool,
    batch: bool,
) -> outcome.Situation:
    """The failed call as `outcome.decide` sees it. ``facts``: the transaction state and
    whether the call was sent, as the driver connection showed them (None: the connection was
    on no node, so nothing was sent and no transaction was open); ``interrupted``: an earlier
    call was cut off after the driver may have sent it (a timeout of the application's,
    cancellation), so what it did cannot be known; ``refused``: the node refused a write as
    read-only (a demoted writer)."""
    transaction: Transaction = "none"
    sent = False
    if facts is not None:
        transaction, sent = ("busy", True) if interrupted else facts
    effect: outcome.Effect = outcome.classify(query, engine) if call == "statement" else "write"
    return outcome.Situation(
        call,
        transaction,
        sent,
        effect,
        retry_reads,
        refused=refused,
        engine=engine,
        single=not batch and outcome.is_single(query, engine),
    )


def next_step(
    decided: outcome.Outcome, *, detached: bool, moved: bool, still_detached: bool
) -> Step:
    """What the connection does before it answers. ``detached``: the call failed because the
    connection was on no node; ``moved``: another caller already replaced the driver
    connection the call failed on; ``still_detached``: the connection is on no node now.

    "stay" (nothing: no new node now, and nothing to let go), "detach" (let go of the dead
    driver connection: the next call reconnects), "attach" (connect a connection on no node),
    "fail_over" (replace the dead driver connection by one on the right node), "answer"
    (another caller moved it already: only the answer is left)."""
    if not decided.fail_over_now:
        return "stay" if detached or moved else "detach"
    if detached or (moved and still_detached):
        return "attach"
    return "answer" if moved else "fail_over"


@dataclass(frozen=True)
class Answer:
    """What the application is told once the connection is on a new node: ``error`` None to
    run the call again, else the error to raise (``message``, and whether the transaction was
    rolled back), after ``events`` (name and fields) are emitted."""

    error: Literal["outcome_unknown", "failover_succeeded"] | None
    message: str = ""
    transaction_rolled_back: bool = False
    events: tuple[tuple[str, dict[str, Any]], ...] = ()


def answer(
    decided: outcome.Outcome,
    *,
    call: Call,
    exc: BaseException,
    old: str,
    new: str,
    after: float,
) -> Answer:
    """The answer for a call that failed with ``exc`` on ``old``, the connection now on
    ``new`` ``after`` s later."""
    if decided.outcome_unknown:
        return Answer(
            "outcome_unknown",
            f"{lost(old, exc)} {_what(call)}: it may or may not have been committed; the "
            f"connection is now on {new}",
            events=(("outcome_unknown", {"old": old, "new": new, "after_s": after}),),
        )
    if decided.rerun:
        if decided.verdict == "retry_read":
            return Answer(None, events=(("read_retried", {"instance": new, "after_s": after}),))
        return Answer(None)
    rolled_back = decided.transaction_rolled_back
    return Answer(
        "failover_succeeded",
        f"{lost(old, exc)}; reconnected to {new}"
        + ("; the open transaction was rolled back" if rolled_back else "")
        + ": run the work again",
        transaction_rolled_back=rolled_back,
        events=(
            (("transaction_rolled_back", {"old": old, "new": new, "after_s": after}),)
            if rolled_back
            else ()
        ),
    )


def unreachable(
    decided: outcome.Outcome, *, call: Call, exc: BaseException, old: str, failure: BaseException
) -> str | None:
    """When no new node could be reached (``failure``): the message of the
    TransactionOutcomeUnknown the application gets instead of ``failure`` when what it sent
    may have committed; None when ``failure`` is the answer."""
    if not decided.outcome_unknown:
        return None
    return (
        f"{lost(old, exc)} {_what(call)}: it may or may not have been committed; and no new "
        f"node could be reached ({short(failure)}): the connection reconnects at its next "
        "statement"
    )


def tell(told: Answer, runtime: Any, exc: BaseException) -> None:
    """Emit ``told``'s events through ``runtime`` (a sync or an asyncio runtime) and raise its
    error, as one of the runtime's exception classes keeping ``exc``'s driver details;
    return when the call is to run again."""
    from aurora_smartdriver._dbapi import keep_driver_details

    for name, fields in told.events:
        runtime.events.emit(name, **fields)
    if told.error == "outcome_unknown":
        raise keep_driver_details(runtime.outcome_unknown(told.message), exc) from exc
    if told.error == "failover_succeeded":
        error = runtime.failover_succeeded(
            told.message, transaction_rolled_back=told.transaction_rolled_back
        )
        raise keep_driver_details(error, exc) from exc
