"""pytest fixtures for testing against a lab cluster (the plugin ``aurora_smartdriver_lab``).

One cluster per engine per test session, started the first time a test asks for it; after each
test the cluster is restored (faults undone, crashed nodes rejoined, replicas refilled), so a test
may break it freely. The writer may differ from one test to the next: ask the lab, don't assume.

Fixtures:

- ``aurora_lab_postgresql``, ``aurora_lab_mariadb``: the :class:`~aurora_smartdriver.lab.Lab`.
- ``aurora_lab``: parametrized over both engines.
- ``aurora_lab_factory``: start extra, private labs (torn down at the end of the test).

Options: ``--aurora-lab-replicas N`` (default 2).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from aurora_smartdriver.lab._cluster import Lab


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("aurora_smartdriver_lab")
    group.addoption(
        "--aurora-lab-replicas",
        type=int,
        default=2,
        help="replicas of each session lab cluster (default 2)",
    )


def _session_lab(request: pytest.FixtureRequest, engine: str) -> Iterator[Lab]:
    replicas = request.config.getoption("--aurora-lab-replicas")
    lab = Lab.start(engine, replicas=replicas, name=f"{engine[:2]}lab")
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="session")
def _aurora_lab_postgresql_session(request: pytest.FixtureRequest) -> Iterator[Lab]:
    yield from _session_lab(request, "postgresql")


@pytest.fixture(scope="session")
def _aurora_lab_mariadb_session(request: pytest.FixtureRequest) -> Iterator[Lab]:
    yield from _session_lab(request, "mariadb")


def _restored(lab: Lab) -> Iterator[Lab]:
    yield lab
    lab.restore()


@pytest.fixture
def aurora_lab_postgresql(_aurora_lab_postgresql_session: Lab) -> Iterator[Lab]:
    """The session's PostgreSQL lab, restored after the test."""
    yield from _restored(_aurora_lab_postgresql_session)


@pytest.fixture
def aurora_lab_mariadb(_aurora_lab_mariadb_session: Lab) -> Iterator[Lab]:
    """The session's MariaDB lab, restored after the test."""
    yield from _restored(_aurora_lab_mariadb_session)


@pytest.fixture(params=["postgresql", "mariadb"])
def aurora_lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """The session's lab for each engine in turn, restored after the test."""
    lab: Lab = request.getfixturevalue(f"_aurora_lab_{request.param}_session")
    yield from _restored(lab)


@pytest.fixture
def aurora_lab_factory() -> Iterator[Callable[..., Lab]]:
    """Start private labs with :meth:`Lab.start`'s arguments; all are torn down after the test."""
    labs: list[Lab] = []

    def start(engine: str = "postgresql", **kwargs: Any) -> Lab:
        lab = Lab.start(engine, **kwargs)
        labs.append(lab)
        return lab

    yield start
    for lab in labs:
        lab.down()
