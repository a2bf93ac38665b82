"""Run SQLAlchemy's dialect compliance suite against the aurora dialects on lab clusters.

    .venv/bin/python compliance/run.py                       # both engines
    .venv/bin/python compliance/run.py --engine postgresql   # one engine
    .venv/bin/python compliance/run.py -- -k ComponentReflectionTest   # extra pytest arguments

For each engine: start a lab cluster (one writer, one replica), provision what the suite needs
(the schemas ``test_schema`` and ``test_schema_2``), run the suite in its own pytest process with
this directory as rootdir and configuration (setup.cfg), tear the lab down, and print the counts.
Exits non-zero when a run has failures or errors.
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
SCHEMAS = ("test_schema", "test_schema_2")
PYTEST = (sys.executable, "-m", "pytest", "-c", "setup.cfg", "--rootdir", ".", "-q")
_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)")


@dataclass
class Outcome:
    engine: str
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


def run_engine(engine: str, pytest_args: list[str]) -> Outcome:
    started = time.monotonic()
    with lab.start(engine, replicas=1, name="sqla") as cluster:
        url = engine_url(cluster.dsn).render_as_string(hide_password=False)
        provision(url, engine)
        print(f"==> {engine}: SQLAlchemy compliance suite on lab {cluster.name}", flush=True)
        done = subprocess.run(
            [*PYTEST, "--dburi", url, *pytest_args],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=False,
        )
    output = done.stdout + done.stderr
    sys.stdout.write(_shown(output, url))
    tail = output.strip().splitlines()[-1] if output.strip() else ""
    counts: dict[str, int] = {}
    for number, kind in _COUNT.findall(tail):
        counts["errors" if kind.startswith("error") else kind] = int(number)
    return Outcome(engine, counts, time.monotonic() - started, done.returncode)


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
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    engines = ENGINES if args.engine == "both" else (args.engine,)
    outcomes = [run_engine(engine, args.pytest_args) for engine in engines]
    print("==> SQLAlchemy compliance suite")
    for outcome in outcomes:
        print("    " + outcome.line())
    print(f"    total {sum(o.seconds for o in outcomes):.0f}s")
    return 0 if all(o.status == 0 for o in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
