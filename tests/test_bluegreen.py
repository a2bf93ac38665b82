"""Specification of the Blue/Green decisions: the metadata's rows, holding, where names lead."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aurora_smartdriver._bluegreen import (
    OLD_SUFFIX,
    AddressBook,
    BadMetadata,
    BlueGreenStatus,
    Pair,
    Phase,
    learn,
    learn_late,
    parse_rows,
    refused,
    should_hold,
    substitute,
)
from aurora_smartdriver._bluegreen_gate import BlueGreenGate
from aurora_smartdriver.resolver import Resolution, ResolveError

moderate = settings(max_examples=60, deadline=None)

STATUSES = {
    "AVAILABLE": Phase.CREATED,
    "SWITCHOVER_INITIATED": Phase.PREPARATION,
    "SWITCHOVER_IN_PROGRESS": Phase.IN_PROGRESS,
    "SWITCHOVER_IN_POST_PROCESSING": Phase.POST,
    "SWITCHOVER_COMPLETED": Phase.COMPLETED,
}
SOURCE, TARGET = "BLUE_GREEN_DEPLOYMENT_SOURCE", "BLUE_GREEN_DEPLOYMENT_TARGET"
DOMAIN = ".abc.us-east-1.rds.amazonaws.com"

names = st.from_regex(r"[a-z][a-z0-9]{0,8}(-[a-z0-9]{1,5}){0,2}", fullmatch=True).filter(
    lambda n: not n.endswith(OLD_SUFFIX) and "-green-" not in n
)
suffixes = st.from_regex(r"[a-z0-9]{6}", fullmatch=True)
addresses = st.tuples(st.integers(1, 254), st.integers(1, 254)).map(lambda t: f"10.0.{t[0]}.{t[1]}")


def row(name: str, role: str, status: str, port: int = 5432) -> tuple[object, ...]:
    return (f"id-{name}", name + DOMAIN, port, role, status, "1.0")


@st.composite
def deployments(draw: st.DrawFn) -> tuple[list[str], str, dict[str, tuple[str, ...]]]:
    """Blue names, the green suffix, and distinct addresses for every blue and green name."""
    blues = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    suffix = draw(suffixes)
    pool = draw(st.lists(addresses, min_size=2 * len(blues), max_size=2 * len(blues), unique=True))
    resolved = {}
    for i, blue in enumerate(blues):
        resolved[blue] = (pool[2 * i],)
        resolved[f"{blue}-green-{suffix}"] = (pool[2 * i + 1],)
    return blues, suffix, resolved


def status_of(blues: list[str], suffix: str, status: str) -> BlueGreenStatus:
    rows = [row(b, SOURCE, status) for b in blues]
    rows += [row(f"{b}-green-{suffix}", TARGET, status) for b in blues]
    parsed = parse_rows(rows)
    assert parsed is not None
    return parsed


# -- the rows -----------------------------------------------------------------------------------
@moderate
@given(st.sampled_from(sorted(STATUSES)), st.booleans())
def test_each_status_is_its_phase_whatever_the_case(status: str, lower: bool) -> None:
    text = status.lower() if lower else status
    parsed = parse_rows([row("a", SOURCE, text), row("a-green-abcdef", TARGET, text)])
    assert parsed is not None and parsed.phase is STATUSES[status]


@moderate
@given(st.lists(st.sampled_from(sorted(STATUSES)), min_size=1, max_size=6))
def test_the_deployment_is_as_far_as_its_furthest_row(statuses: list[str]) -> None:
    parsed = parse_rows([row(f"n{i}", SOURCE, s) for i, s in enumerate(statuses)])
    assert parsed is not None
    assert parsed.phase is max(STATUSES[s] for s in statuses)


def test_rows_without_a_role_are_no_deployment() -> None:
    # The Multi-AZ topology shares the table: its rows carry no role, status or version.
    assert parse_rows([("1", "a" + DOMAIN, 3306, None, None, None)]) is None
    assert parse_rows([]) is None


def test_the_instance_name_is_the_endpoint_first_label() -> None:
    parsed = parse_rows([row("Orders-1", SOURCE, "AVAILABLE")])
    assert parsed is not None and parsed.members[0].name == "orders-1"


@pytest.mark.parametrize(
    ("bad", "named"),
    [
        (("1", "a" + DOMAIN, 5432, SOURCE, "AVAILABLE", "2.0"), "version '2.0'"),
        (("1", "a" + DOMAIN, 5432, "BLUE", "AVAILABLE", "1.0"), "role 'BLUE'"),
        (("1", "a" + DOMAIN, 5432, SOURCE, "SWITCHING", "1.0"), "status 'SWITCHING'"),
        (("1", "", 5432, SOURCE, "AVAILABLE", "1.0"), "no endpoint"),
        (("1", "a" + DOMAIN, 0, SOURCE, "AVAILABLE", "1.0"), "bad port: 0"),
        (("1", "a", 5432), "3 columns"),
    ],
)
def test_a_row_that_cannot_be_read_is_an_error_naming_the_value(
    bad: tuple[object, ...], named: str
) -> None:
    with pytest.raises(BadMetadata, match=named):
        parse_rows([bad])


# -- holding ------------------------------------------------------------------------------------
@moderate
@given(
    st.one_of(st.none(), st.sampled_from(list(Phase))),
    st.floats(0, 1000, allow_nan=False),
    st.floats(0, 100, allow_nan=False),
)
def test_new_connections_wait_only_while_in_progress_and_within_the_budget(
    phase: Phase | None, waited: float, budget: float
) -> None:
    held = should_hold(phase, waited, budget)
    assert held == (phase is Phase.IN_PROGRESS and waited < budget)
    if waited >= budget:
        assert not held  # a status that never moves on holds nobody once the budget is spent


# -- the address book and where names lead ------------------------------------------------------
@moderate
@given(deployments())
def test_each_green_instance_is_paired_with_the_blue_one_whose_name_it_takes(
    deployment: tuple[list[str], str, dict[str, tuple[str, ...]]],
) -> None:
    blues, suffix, resolved = deployment
    book = learn(AddressBook(), status_of(blues, suffix, "AVAILABLE"), resolved)
    assert {p.blue for p in book.pairs} == set(blues)
    for pair in book.pairs:
        assert pair.green == f"{pair.blue}-green-{suffix}"
        assert pair.blue_addresses == resolved[pair.blue]
        assert pair.green_addresses == resolved[pair.green]


@moderate
@given(deployments(), st.sampled_from(["SWITCHOVER_IN_PROGRESS", "SWITCHOVER_COMPLETED"]))
def test_nothing_is_learned_once_the_names_have_moved(
    deployment: tuple[list[str], str, dict[str, tuple[str, ...]]], status: str
) -> None:
    blues, suffix, resolved = deployment
    book = learn(AddressBook(), status_of(blues, suffix, "AVAILABLE"), resolved)
    # After the rename a blue name resolves to the green address: learning that would pair
    # the blue name with itself.
    moved = {b: resolved[f"{b}-green-{suffix}"] for b in blues}
    assert learn(book, status_of(blues, suffix, status), moved) is book


@moderate
@given(deployments(), st.sampled_from([None, Phase.CREATED, Phase.PREPARATION]))
def test_before_the_switchover_names_lead_where_dns_says(
    deployment: tuple[list[str], str, dict[str, tuple[str, ...]]], phase: Phase | None
) -> None:
    blues, suffix, resolved = deployment
    book = learn(AddressBook(), status_of(blues, suffix, "AVAILABLE"), resolved)
    for name, found in resolved.items():
        assert substitute(book, phase, name + DOMAIN, found) == found


@moderate
@given(
    deployments(),
    st.sampled_from([Phase.IN_PROGRESS, Phase.POST, Phase.COMPLETED]),
    st.sampled_from(["blue", "old", "green", "cluster"]),
    st.booleans(),
)
def test_from_the_switchover_on_no_name_leads_to_an_old_blue_address(
    deployment: tuple[list[str], str, dict[str, tuple[str, ...]]],
    phase: Phase,
    how: str,
    dns_caught_up: bool,
) -> None:
    blues, suffix, resolved = deployment
    book = learn(AddressBook(), status_of(blues, suffix, "AVAILABLE"), resolved)
    old = book.old_addresses
    for blue in blues:
        green_address = resolved[f"{blue}-green-{suffix}"]
        # What DNS answers now: the old address while it lags, the green one once it caught up
        # (the -old1 name always leads to the old instance).
        stale = resolved[blue]
        answer = green_address if dns_caught_up and how != "old" else stale
        host = {
            "blue": blue + DOMAIN,
            "old": blue + OLD_SUFFIX + DOMAIN,
            "green": blue + DOMAIN,
            "cluster": "orders.cluster-abc.us-east-1.rds.amazonaws.com",  # CNAME to the writer
        }[how]
        got = substitute(book, phase, host, answer)
        assert not set(got) & old
        assert got == green_address


def test_a_name_outside_the_deployment_is_left_alone() -> None:
    book = AddressBook((Pair("a", "a-green-abcdef", ("10.0.0.1",), ("10.0.0.2",)),))
    assert substitute(book, Phase.COMPLETED, "other" + DOMAIN, ("10.0.0.9",)) == ("10.0.0.9",)


def test_a_pair_without_a_green_address_does_not_substitute() -> None:
    # Nothing to go to: the connection follows DNS rather than going nowhere.
    book = AddressBook((Pair("a", "a-green-abcdef", ("10.0.0.1",), ()),))
    assert substitute(book, Phase.COMPLETED, "a" + DOMAIN, ("10.0.0.1",)) == ("10.0.0.1",)


@moderate
@given(deployments(), suffixes, st.lists(addresses, min_size=4, max_size=4, unique=True))
def test_a_second_deployment_is_learned_afresh(
    first: tuple[list[str], str, dict[str, tuple[str, ...]]],
    suffix: str,
    fresh: list[str],
) -> None:
    """After a switchover the blue names mean the former green instances: a later deployment
    (the first one deleted, its metadata gone) pairs them with its own green instances, and
    from its switchover on no name leads to the instances it replaces."""
    blues, first_suffix, resolved = first
    blues = blues[:2]
    assume(suffix != first_suffix)
    assume(not set(fresh) & {a for found in resolved.values() for a in found})
    dns = dict(resolved)
    gate = BlueGreenGate(5.0, lambda host: dns[host.removesuffix(DOMAIN)])
    for status in ("AVAILABLE", "SWITCHOVER_IN_PROGRESS", "SWITCHOVER_COMPLETED"):
        gate.observe(status_of(blues, first_suffix, status))
    gate.observe(None)  # the first deployment deleted
    now_blue = {b: resolved[f"{b}-green-{first_suffix}"] for b in blues}  # DNS caught up
    now_green = {f"{b}-green-{suffix}": (fresh[i],) for i, b in enumerate(blues)}
    dns = {**now_blue, **now_green}
    gate.observe(status_of(blues, suffix, "AVAILABLE"))
    gate.observe(status_of(blues, suffix, "SWITCHOVER_IN_PROGRESS"))
    assert gate.book.old_addresses == {a for b in blues for a in now_blue[b]}
    for blue in blues:
        found = Resolution(blue + DOMAIN, now_blue[blue], 5.0, "dns", 0.0)
        assert gate.rewrite(found).addresses == now_green[f"{blue}-green-{suffix}"]


def moved_status(blues: list[str], status: str) -> BlueGreenStatus:
    """The metadata once the names moved: old blue instances under `-old1`, green under the
    blue names."""
    rows = [row(b + OLD_SUFFIX, SOURCE, status) for b in blues]
    rows += [row(b, TARGET, status) for b in blues]
    parsed = parse_rows(rows)
    assert parsed is not None
    return parsed


@moderate
@given(deployments(), st.sampled_from(["SWITCHOVER_IN_POST_PROCESSING", "SWITCHOVER_COMPLETED"]))
def test_a_late_reader_knows_the_old_instances_and_refuses_them(
    deployment: tuple[list[str], str, dict[str, tuple[str, ...]]], status: str
) -> None:
    blues, suffix, resolved = deployment
    old = {b + OLD_SUFFIX: resolved[b] for b in blues}  # what the -old1 names lead to
    late = moved_status(blues, status)
    book = learn_late(AddressBook(), late, old)
    assert book.old_addresses == {a for b in blues for a in resolved[b]}
    phase = late.phase
    for blue in blues:
        stale = resolved[blue]  # DNS has not caught up: the blue name leads to the old one
        assert refused(book, phase, substitute(book, phase, blue + DOMAIN, stale))
        new = resolved[f"{blue}-green-{suffix}"]  # once it has: the green instance
        assert not refused(book, phase, substitute(book, phase, blue + DOMAIN, new))
    # Nothing is refused before the switchover, and a book learned in time is kept.
    assert not refused(book, Phase.CREATED, resolved[blues[0]])
    early = learn(AddressBook(), status_of(blues, suffix, "AVAILABLE"), resolved)
    assert learn_late(early, late, old) is early


@moderate
@given(deployments(), st.sampled_from([Phase.IN_PROGRESS, Phase.POST, Phase.COMPLETED]))
def test_a_book_learned_in_time_refuses_nothing_it_can_substitute(
    deployment: tuple[list[str], str, dict[str, tuple[str, ...]]], phase: Phase
) -> None:
    blues, suffix, resolved = deployment
    book = learn(AddressBook(), status_of(blues, suffix, "AVAILABLE"), resolved)
    for name, found in resolved.items():
        assert not refused(book, phase, substitute(book, phase, name + DOMAIN, found))


@moderate
@given(deployments(), st.sampled_from(["SWITCHOVER_IN_PROGRESS", "SWITCHOVER_COMPLETED"]))
def test_a_book_of_an_earlier_deployment_yields_to_the_old_names(
    first: tuple[list[str], str, dict[str, tuple[str, ...]]], status: str
) -> None:
    """A gate that missed a later deployment until its names moved (its monitor could not
    refresh meanwhile) still has the earlier one's book: the `-old1` names correct it."""
    blues, suffix, resolved = first
    gate_dns = dict(resolved)
    gate = BlueGreenGate(5.0, lambda host: gate_dns[host.removesuffix(DOMAIN)])
    for step in ("AVAILABLE", "SWITCHOVER_IN_PROGRESS", "SWITCHOVER_COMPLETED"):
        gate.observe(status_of(blues, suffix, step))
    gate.observe(None)
    # The second deployment replaces the instances the first one's green became.
    replaced = {b: resolved[f"{b}-green-{suffix}"] for b in blues}
    gate_dns.update({b + OLD_SUFFIX: replaced[b] for b in blues})
    gate.observe(moved_status(blues, status))
    assert gate.book.old_addresses >= {a for b in blues for a in replaced[b]}
    for blue in blues:  # DNS still names the replaced instance
        with pytest.raises(ResolveError, match="Blue/Green"):
            gate.rewrite(Resolution(blue + DOMAIN, replaced[blue], 5.0, "dns", 0.0))
    assert gate.stats().refused == len(blues)
