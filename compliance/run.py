"""Run SQLAlchemy's dialect compliance suite against the aurora dialects on lab clusters.

    .venv/bin/python compliance/run.py                       # both engines
    .venv/bin/python compliance/run.py --engine postgresql   # one engine
    .venv/bin/python compliance/run.py --dialects async      # the asyncio dialects only
    .venv/bin/python compliance/run.py -- -k ComponentReflectionTest   # extra pytest arguments

For each engine: start a lab cluster (one writer, one replica), provision what the suite needs
(the schemas ``test_schema`` and ``test_schema_2``), run the suite in its own pytest process with
this directory as rootdir and configuration (setup.cfg), once for the sync dialect and once for
the asyncio one (``postgresql+aurora_psycopg_async``, ``mariadb+aurora_aiomysql``), tear the lab
down, and print the counts. Exits non-zero when a run has failures or errors.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, text

from aurora_smartdriver import lab
from aurora_smartdriver.sqlalchemy import engine_url

HERE = Path(__file__).resolve().parent
ENGINES = ("postgresql", "mariadb")
ASYNC_DRIVERS = {"postgresql": "aurora_psycopg_async", "mariadb": "aurora_aiomysql"}
SCHEMAS = ("test_schema", "test_schema_2")
PYTEST = (sys.executable, "-m", "pytest", "-c", "setup.cfg", "--rootdir", ".", "-q")
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


@dataclass
class Outcome:
    engine: str  # the URL's dialect+driver
    counts: dict[str, int]
    seconds: float
    status: int

    def line(self) -> str:
        shown = ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items()))
        return f"{self.engine}: {shown or 'no result'} in {self.seconds:.0f}s (exit {self.status})"


def provision(url: str, engine: str) -> None:
    """Create the schemas the suite uses (databases, on MariaDB) as the application user."""
    eng = create_engine(url)
    try:
        with eng.begin() as conn:
            for schema in SCHEMAS:
                if engine == "postgresql":
                    conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {schema}"))
                else:
                    conn.execute(text(f"CREATE DATABASE IF NOT EXISTS {schema}"))
    finally:
        eng.dispose()


def run_engine(engine: str, pytest_args: list[str], dialects: str = "both") -> list[Outcome]:
    """The suite on one lab of ``engine``: the sync dialect, then the asyncio one."""
    outcomes: list[Outcome] = []
    with lab.start(engine, replicas=1, name="sqla") as cluster:
        url = engine_url(cluster.dsn)
        provision(url.render_as_string(hide_password=False), engine)
        urls = []
        if dialects in ("sync", "both"):
            urls.append(url)
        if dialects in ("async", "both"):
            urls.append(url.set(drivername=f"{url.get_backend_name()}+{ASYNC_DRIVERS[engine]}"))
        for each in urls:
            rendered = each.render_as_string(hide_password=False)
            outcomes.append(_run_suite(cluster.name, rendered, pytest_args))
    return outcomes


def _run_suite(lab_name: str, url: str, pytest_args: list[str]) -> Outcome:
    started = time.monotonic()
    name = url.split("://", 1)[0]
    print(f"==> {name}: SQLAlchemy compliance suite on lab {lab_name}", flush=True)
    done = subprocess.run(
        [*PYTEST, "--dburi", url, *pytest_args],
        cwd=HERE,
        capture_output=True,
        text=True,
        check=False,
    )
    output = done.stdout + done.stderr
    sys.stdout.write(_shown(output, url))
    # pytest's summary line: the last with counts (plugins may warn after it, on stderr)
    summaries = [line for line in done.stdout.splitlines() if _COUNT.search(line)]
    tail = summaries[-1] if summaries else ""
    counts: dict[str, int] = {}
    for number, kind in _COUNT.findall(tail):
        counts["errors" if kind.startswith("error") else kind] = int(number)
    return Outcome(name, counts, time.monotonic() - started, done.returncode)


def _shown(output: str, url: str) -> str:
    """The output without the lab's password (pytest may echo the --dburi)."""
    password = engine_url_password(url)
    return output.replace(password, "***") if password else output


def engine_url_password(url: str) -> str | None:
    from sqlalchemy.engine import make_url

    return make_url(url).password


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=(*ENGINES, "both"), default="both")
    parser.add_argument("--dialects", choices=("sync", "async", "both"), default="both")
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    engines = ENGINES if args.engine == "both" else (args.engine,)
    outcomes = [
        outcome
        for engine in engines
        for outcome in run_engine(engine, args.pytest_args, args.dialects)
    ]
    print("==> SQLAlchemy compliance suite")
    for outcome in outcomes:
        print("    " + outcome.line())
    print(f"    total {sum(o.seconds for o in outcomes):.0f}s")
    return 0 if all(o.status == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
