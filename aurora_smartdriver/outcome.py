"""What the application is told when its connection dies: a pure decision over plain values.

The library's one promise (DESIGN.md, "Failure semantics"): when it says "nothing of this work
committed, run it again", nothing did; when it cannot know, it says so. Everything that decides
that lives here, with no I/O, so it can be tested over every combination:

- `classify` says what a statement may do to a transaction (read, begin, write, end it);
- `is_failover_signal` says whether a driver error means the node is gone or demoted;
- `decide` turns what was in flight and the transaction state the driver knew before it into an
  `Outcome`: fail over now or later, re-run or not, and what to raise.

The connection proxy gathers the facts (the driver's own transaction status, the statement text,
whether the call ever reached a server) and does what the `Outcome` says.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "Call",
    "Effect",
    "Outcome",
    "Situation",
    "Transaction",
    "classify",
    "decide",
    "is_failover_signal",
    "is_read",
    "is_single",
]

Effect = Literal["read", "begin", "write", "rollback", "commit"]
"""What a statement may do: only read; open a transaction (a lone BEGIN or START TRANSACTION;
on MySQL it commits an open one first); write (inside whatever transaction
is open, or as its own when none is); roll the open transaction back; or end the open
transaction keeping its work (an explicit COMMIT, or on MySQL a statement with an implicit
commit). Anything not known to be harmless counts as ``write`` or ``commit``."""

Call = Literal["statement", "commit", "rollback", "ping"]
"""What the application was doing: a statement (``execute``), the API ``commit()`` or
``rollback()``, or a ping."""

Transaction = Literal["none", "implicit", "open", "busy"]
"""The transaction as the driver knew it just before the call: ``none`` (autocommit, idle: a
statement is its own transaction), ``implicit`` (not autocommit, idle: a statement starts a
transaction that only a COMMIT keeps), ``open`` (a transaction was under way), ``busy``
(another statement was still running, or the state could not be read: nothing is assumed)."""

Verdict = Literal["run_again", "retry_read", "lost_read", "rolled_back", "unknown", "nothing_lost"]


@dataclass(frozen=True, slots=True)
class Situation:
    """The facts at the moment a connection was lost under a call."""

    call: Call
    transaction: Transaction
    sent: bool
    """Whether the call may have reached a server (False: the connection was already gone)."""
    effect: Effect = "write"
    """What the statement may do (``classify``); only read for ``call == "statement"``."""
    retry_reads: bool = False
    refused: bool = False
    """The server answered the call with a refusal (a read-only node): the call did nothing,
    but the connection is left for another node, so an open transaction is lost."""
    engine: str = "postgresql"
    """MySQL commits an open transaction at BEGIN; PostgreSQL only warns."""
    single: bool = True
    """One statement (not a batch, not several in one string): a refusal of it means none of
    it ran; in a batch or a string of several, those before may have committed."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the application gets, and what the connection does first."""

    verdict: Verdict
    fail_over_now: bool
    """Find the right node before returning (False: only let go of the dead connection; the
    next statement reconnects)."""
    rerun: bool
    """Run the call again on the new node, transparently (it never ran, or it is a read)."""
    raise_failover_succeeded: bool
    transaction_rolled_back: bool
    outcome_unknown: bool
    """Raise ``TransactionOutcomeUnknown``: whatever happens to the failover (when it fails too,
    the unknown outcome is raised with the failover's error as its cause)."""


_OUTCOMES: dict[Verdict, Outcome] = {
    "run_again": Outcome("run_again", True, True, False, False, False),
    "retry_read": Outcome("retry_read", True, True, False, False, False),
    "lost_read": Outcome("lost_read", True, False, True, False, False),
    "rolled_back": Outcome("rolled_back", True, False, True, True, False),
    "unknown": Outcome("unknown", True, False, False, False, True),
    "nothing_lost": Outcome("nothing_lost", False, False, False, False, False),
}


def decide(s: Situation) -> Outcome:
    """What the application is told about the call in ``s`` (see DESIGN.md's table)."""
    return _OUTCOMES[_verdict(s)]


def _verdict(s: Situation) -> Verdict:
    if s.call == "rollback":
        # The server drops a transaction with its connection: rolled back either way.
        return "nothing_lost"
    if s.transaction == "busy":
        # Another statement was under way (or the state is unreadable): it may have been
        # a COMMIT or a write of its own, so nothing can be promised.
        return "unknown"
    if s.refused and s.sent:
        if s.transaction == "open":
            return "rolled_back"
        if not s.single and s.call == "statement" and s.transaction == "none":
            return "unknown"  # autocommit: the statements before the refused one committed
        return "lost_read"
    if not s.sent:
        # Nothing reached a server: only what was already open is gone.
        if s.transaction == "open":
            return "rolled_back"
        return "nothing_lost" if s.call == "commit" else "run_again"
    if s.call == "commit":
        return "unknown" if s.transaction == "open" else "nothing_lost"
    if s.call == "ping":
        return "rolled_back" if s.transaction == "open" else "run_again"
    # A statement that may have reached the server.
    effect = s.effect
    if effect == "commit" or (
        effect == "begin" and s.transaction == "open" and s.engine == "mysql"
    ):
        return "unknown"  # it may have ended (committed) a transaction, or been one
    if s.transaction == "open":
        return "rolled_back"
    if effect == "begin":
        return "run_again"  # nothing was open: a lost BEGIN changed nothing; send it again
    if effect == "read":
        return "retry_read" if s.retry_reads else "lost_read"
    if s.transaction == "implicit":
        # The statement began a transaction of its own that no COMMIT reached.
        return "rolled_back"
    # Autocommit: the statement was its own transaction and may have committed.
    return "unknown"


def is_failover_signal(
    kind: str,
    *,
    failover: bool,
    asked_writer: bool,
    session_read_only: bool,
    lent_as_writer: bool,
) -> bool:
    """Whether a driver error of ``kind`` means the node is gone or demoted.

    A lost connection always does (when ``failover`` is on). A read-only error (PostgreSQL
    25006, MySQL 1290/1836) does only when the connection asked for the writer, its session is
    not read-only, and the node was the writer when the connection was lent: otherwise it is
    the application writing where it asked not to, and reaches it unchanged.
    """
    if not failover:
        return False
    if kind == "disconnect":
        return True
    if kind == "read_only":
        return asked_writer and not session_read_only and lent_as_writer
    return False


# -- statements --------------------------------------------------------------------------------

_READ_STARTS = frozenset(
    {"select", "show", "with", "values", "table", "explain", "describe", "desc"}
)
_READ_BREAKERS = (
    " for update",
    " for share",
    " for no key update",
    " for key share",
    " lock in share mode",
    " into ",
    " insert ",
    " update ",
    " delete ",
    " merge ",
    " nextval ",
    " setval ",
)
"""Words that make a SELECT-shaped statement lock or write (checked on its words)."""
_CALL = re.compile(r"([a-z_][a-z0-9_$.]*|qident)\s*\(")
_SAFE_CALLS = frozenset(
    {
        # syntax that takes parentheses
        *("select", "from", "join", "on", "in", "exists", "values", "as", "over", "filter"),
        *("where", "and", "or", "not", "any", "all", "some", "lateral", "union", "intersect"),
        *("except", "using", "by", "when", "then", "else", "case", "row", "array", "cast"),
        *("is", "between", "like", "ilike", "with", "materialized", "within", "group", "having"),
        *("interval", "table", "show", "explain", "describe", "desc", "limit", "offset"),
        # aggregates and scalar functions without side effects, both engines
        *("count", "sum", "min", "max", "avg", "bool_and", "bool_or", "every", "string_agg"),
        *("array_agg", "json_agg", "jsonb_agg", "json_object_agg", "group_concat", "stddev"),
        *("coalesce", "nullif", "greatest", "least", "ifnull", "if", "isnull", "abs", "round"),
        *("ceil", "ceiling", "floor", "mod", "power", "sqrt", "length", "char_length", "lower"),
        *("upper", "trim", "ltrim", "rtrim", "substring", "substr", "concat", "concat_ws"),
        *("replace", "position", "left", "right", "lpad", "rpad", "format", "to_char"),
        *("to_date", "to_timestamp", "to_number", "date_trunc", "date_part", "extract"),
        *("now", "current_timestamp", "current_date", "localtimestamp", "date", "time"),
        *("timestamp", "date_format", "str_to_date", "unix_timestamp", "from_unixtime"),
        *("datediff", "date_add", "date_sub", "timestampdiff", "age", "md5", "sha1", "sha2"),
        *("encode", "decode", "hex", "unhex", "convert", "json_extract", "json_unquote"),
        *("jsonb_build_object", "json_build_object", "to_json", "to_jsonb", "row_to_json"),
        *("unnest", "generate_series", "array_length", "cardinality", "pg_is_in_recovery"),
        *("version", "database", "current_database", "current_schema", "current_user"),
        *("pg_sleep", "sleep", "row_number", "rank", "dense_rank", "lag", "lead"),
        *("first_value", "last_value", "ntile", "percentile_cont", "percentile_disc"),
        *("numeric", "decimal", "varchar", "char", "int", "integer", "bigint", "float"),
    }
)
"""Names that may stand before a parenthesis in a statement that only reads."""
_BEGINS = frozenset({"begin", "start"})
_POSTGRESQL_ENDS = frozenset({"commit", "end"})
"""PostgreSQL statements that end a transaction keeping its work (PREPARE TRANSACTION too)."""
_MYSQL_KEEPS = frozenset(
    {
        "select",
        "insert",
        "update",
        "delete",
        "replace",
        "with",
        "values",
        "table",
        "show",
        "explain",
        "describe",
        "desc",
        "savepoint",
        "release",
        "do",
        "handler",
        "use",
        "prepare",
        "deallocate",
        "get",
        "signal",
        "resignal",
        "help",
        "set",
    }
)
"""MySQL statements that never commit an open transaction (MySQL commits implicitly before
DDL, LOCK TABLES, START TRANSACTION and more; a CALL or EXECUTE may run a COMMIT): every
statement not listed here may end the transaction."""


_IDENT = " qident "
"""What a quoted identifier becomes: a name no list knows (a call of it is not a safe call)."""
_DOLLAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")
_MYSQL_EXEC_COMMENT = re.compile(r"/\*M?!\d*")


def _scan(text: str, engine: str) -> list[str] | None:
    """The statements of ``text`` as code: lower case, comments removed, string literals
    replaced by ``''`` and quoted identifiers by a placeholder, split at the ``;`` between
    statements. None when the text cannot be read with certainty (an unterminated string or
    comment): the callers then assume the worst.

    Follows each engine's lexical rules: PostgreSQL's standard and ``E''`` strings,
    dollar quotes, ``"identifiers"`` and nested comments; MySQL's backslash escapes,
    ``"strings"``, `` `identifiers` ``, ``#`` and ``-- `` comments, and the executable
    ``/*! ... */`` and ``/*M! ... */`` comments, whose content runs and so counts as code.
    """
    mysql = engine == "mysql"
    out: list[str] = []
    statements: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'" or (c == '"' and mysql):
            backslash = mysql or (i > 0 and text[i - 1] in "eE" and not _word_char(text, i - 2))
            end = _string_end(text, i, c, backslash)
            if end < 0:
                return None
            out.append(" '' ")
            i = end
        elif c == '"' or (c == "`" and mysql):
            end = _string_end(text, i, c, False)
            if end < 0:
                return None
            out.append(_IDENT)
            i = end
        elif c == "$" and not mysql and (found := _DOLLAR.match(text, i)) is not None:
            tag = found.group(0)
            end = text.find(tag, found.end())
            if end < 0:
                return None
            out.append(" '' ")
            i = end + len(tag)
        elif (
            c == "-"
            and text.startswith("--", i)
            and (not mysql or i + 2 >= n or text[i + 2] in " \t\r\n\f\v")
        ) or (c == "#" and mysql):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            out.append(" ")
        elif c == "/" and text.startswith("/*", i):
            executable = mysql and _MYSQL_EXEC_COMMENT.match(text, i)
            if executable:
                out.append(" ")  # the content is code; its closing */ is skipped below
                i = executable.end()
                continue
            end = _comment_end(text, i, nested=not mysql)
            if end < 0:
                return None
            out.append(" ")
            i = end
        elif c == "*" and mysql and text.startswith("*/", i):
            out.append(" ")  # the end of an executable comment
            i += 2
        elif c == ";":
            statements.append("".join(out))
            out = []
            i += 1
        else:
            out.append(c)
            i += 1
    statements.append("".join(out))
    return [" ".join(part.lower().split()) for part in statements if part.strip()]


def _word_char(text: str, i: int) -> bool:
    return i >= 0 and (text[i].isalnum() or text[i] in "_$")


def _string_end(text: str, start: int, quote: str, backslash: bool) -> int:
    """The index just after the literal opened at ``start`` (doubled quotes, and with
    ``backslash`` backslash escapes, stay inside it); -1 when it never closes."""
    i, n = start + 1, len(text)
    while i < n:
        c = text[i]
        if backslash and c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return -1


def _comment_end(text: str, start: int, *, nested: bool) -> int:
    """The index just after the comment opened at ``start``; -1 when it never closes."""
    depth, i, n = 1, start + 2, len(text)
    while i < n:
        if nested and text.startswith("/*", i):
            depth += 1
            i += 2
        elif text.startswith("*/", i):
            depth -= 1
            i += 2
            if depth == 0:
                return i
        else:
            i += 1
    return -1


_TOKEN = re.compile(r"[a-z_][a-z0-9_$]*")


def _first_word(statement: str) -> str:
    found = _TOKEN.search(statement.lstrip("( "))
    return found.group(0) if found else ""


def _is_single_read(statement: str) -> bool:
    words = _TOKEN.findall(statement)
    if not words or words[0] not in _READ_STARTS:
        return False
    if words[0] in ("explain", "describe", "desc") and (
        "analyze" in words or "analyse" in words or "execute" in words
    ):
        return False  # EXPLAIN ANALYZE runs the statement it explains
    joined = f" {' '.join(words)} "
    if any(word in joined for word in _READ_BREAKERS):
        return False
    # A function may write (a SELECT of a function that inserts is a write): only calls of
    # functions known to be free of side effects keep a statement a read.
    return all(name in _SAFE_CALLS for name in _CALL.findall(statement))


def _text(query: Any) -> str | None:
    if isinstance(query, bytes | bytearray | memoryview):
        return bytes(query).decode(errors="replace")
    if isinstance(query, str):
        return query
    return None  # a composed query (psycopg.sql) cannot be read without a connection


def classify(query: Any, engine: str) -> Effect:
    """What ``query`` may do to a transaction on ``engine`` ("postgresql" or "mysql").

    Conservative: text that cannot be read (a composed query object, say) or several
    statements count as possibly committing unless each is known not to.
    """
    text = _text(query)
    statements = None if text is None else _scan(text, engine)
    if statements is None:
        return "commit"
    if not statements:
        return "read"  # an empty query does nothing
    if len(statements) == 1:
        statement = statements[0]
        word = _first_word(statement)
        if _is_single_read(statement):
            return "read"
        if word in _BEGINS and (word == "begin" or statement.split()[1:2] == ["transaction"]):
            return "begin"  # on MySQL it also commits an open transaction (see `decide`)
        if word in ("rollback", "abort") and " to " not in f" {statement} ":
            return "rollback"
    return "commit" if any(_may_commit(s, engine) for s in statements) else "write"


def _may_commit(statement: str, engine: str) -> bool:
    word = _first_word(statement)
    if engine == "mysql":
        if word == "set":  # SET STATEMENT ... FOR <statement> runs that statement
            return any(w in statement for w in ("autocommit", "password", "statement"))
        if word == "release":
            return not statement.startswith("release savepoint")
        return word not in _MYSQL_KEEPS
    if word in _POSTGRESQL_ENDS:
        return True
    return word == "prepare" and statement.split()[1:2] == ["transaction"]


def is_single(query: Any, engine: str) -> bool:
    """Whether ``query`` is one statement (text that cannot be read is not)."""
    text = _text(query)
    statements = None if text is None else _scan(text, engine)
    return statements is not None and len(statements) <= 1


def is_read(query: Any, engine: str | None = None) -> bool:
    """Whether ``query`` is one statement that only reads (worth re-running after a failover
    with ``retry_reads``), on ``engine`` (on both when None). Conservative: several
    statements, a locking clause, INTO, a data-modifying CTE, EXPLAIN ANALYZE, a call of a
    function not known to be free of side effects, or anything not text is not a read."""
    text = _text(query)
    if text is None:
        return False
    for name in (engine,) if engine else ("postgresql", "mysql"):
        statements = _scan(text, name)
        if statements is None or len(statements) != 1 or not _is_single_read(statements[0]):
            return False
    return True
