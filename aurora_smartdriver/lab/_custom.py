"""The lab's Aurora custom endpoints: their members, their DNS answers, their changes.

What RDS does, imitated from the lab's state alone (no import from the library, so a library
bug cannot hide behind the same code on both sides):

- a custom endpoint of kind "reader" leads to its members that are replicas now, "any" to its
  members whatever their role (the writer included);
- members are the `static` list, or, when it is empty, every instance but the `excluded` ones,
  including instances added later;
- its DNS name resolves to the addresses of its members that are up, the list rotated on every
  query like RDS's round robin; with none up the name has no address (NODATA).
"""

from __future__ import annotations

import itertools
import re

from aurora_smartdriver.lab import _state as st
from aurora_smartdriver.lab._engine import LabError

__all__ = ["KINDS", "check", "find", "members", "rotated_addresses"]

KINDS = ("reader", "any")
_NAME = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
_turns = itertools.count()


def members(state: st.LabState, endpoint: st.CustomEndpointState) -> list[st.NodeState]:
    """The nodes a connection through `endpoint` may reach now, up or not, by role and list."""
    if endpoint.static:
        chosen = [n for n in state.nodes if n.id in endpoint.static]
    else:
        chosen = [n for n in state.nodes if n.id not in endpoint.excluded]
    if endpoint.kind == "reader":
        chosen = [n for n in chosen if n.role == "reader"]
    return chosen


def rotated_addresses(state: st.LabState, endpoint: st.CustomEndpointState) -> tuple[str, ...]:
    """The addresses its DNS name answers with: members up, rotated one step per query."""
    up = [n.address for n in members(state, endpoint) if n.status in ("running", "hung")]
    if not up:
        return ()
    turn = next(_turns) % len(up)
    return tuple(up[turn:] + up[:turn])


def find(state: st.LabState, name: str) -> st.CustomEndpointState:
    for endpoint in state.custom_endpoints:
        if endpoint.name == name:
            return endpoint
    known = ", ".join(e.name for e in state.custom_endpoints) or "none"
    raise LabError(f"no custom endpoint {name!r} in lab {state.name!r} (custom endpoints: {known})")


def check(
    state: st.LabState,
    name: str,
    kind: str,
    static: list[str],
    excluded: list[str],
) -> None:
    """Refuse what RDS refuses: a bad name or kind, unknown instances, both lists at once."""
    if not _NAME.fullmatch(name) or len(name) > 63:
        raise LabError(
            f"custom endpoint name {name!r}: use lowercase letters, digits and single '-', "
            "starting with a letter (at most 63)"
        )
    if kind not in KINDS:
        raise LabError(f"custom endpoint kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if static and excluded:
        raise LabError(
            "give a custom endpoint static members or excluded members, not both "
            "(RDS ignores the excluded list when there are static members)"
        )
    known = {n.id for n in state.nodes}
    unknown = sorted((set(static) | set(excluded)) - known)
    if unknown:
        raise LabError(
            f"no instance {', '.join(unknown)} in lab {state.name!r} "
            f"(instances: {', '.join(sorted(known))})"
        )
