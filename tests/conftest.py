"""Session wiring: under pytest-xdist (``./dev test`` runs two workers), all the tests of one
engine's session lab run in the same worker, so each engine still has one lab per session; the
other tests run a module per worker, so a module's own lab (``tls_lab``) starts once."""

from __future__ import annotations

import pytest

_SESSION_LABS = {
    "_aurora_lab_postgresql_session": "postgresql",
    "_aurora_lab_mariadb_session": "mariadb",
}


def lab_engines(item: pytest.Item) -> set[str]:
    """The engines whose session lab ``item`` uses (the ``aurora_lab`` fixture picks its
    session lab by parameter, so it is read from the call spec)."""
    names = set(getattr(item, "fixturenames", ()))
    engines = {engine for name, engine in _SESSION_LABS.items() if name in names}
    callspec = getattr(item, "callspec", None)
    if "aurora_lab" in names and callspec is not None:
        engines.add(str(callspec.params["aurora_lab"]))
    return engines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        engines = lab_engines(item)
        group = "+".join(sorted(engines)) if engines else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    if getattr(config.option, "numprocesses", None):
        # xdist hands out groups in the order of their first test, alternating between the
        # workers: the two long engine groups first, so that they start on different workers.
        # A stable sort: each group keeps its tests' order.
        rank = {"postgresql": 0, "mariadb": 1}
        items.sort(key=lambda item: min((rank[e] for e in lab_engines(item)), default=2))
