"""Run the drivers' own test suites on a lab writer, bare and through the library, side by side.

    .venv/bin/python compliance/upstream.py                      # both suites, when found
    .venv/bin/python compliance/upstream.py --suite psycopg -- -k test_cursor   # extra pytest args

The suites are PyMySQL's ``pymysql/tests`` and psycopg's ``tests/test_connection.py``,
``test_cursor*.py`` (the synchronous ones: the library has no asyncio front yet),
``test_transaction.py``, ``test_errors.py``, ``test_copy.py`` and ``test_psycopg_dbapi20.py``.
Neither driver ships its tests in a PyPI artifact, so they are read from a checkout of the
driver's repository, ideally at the tag of the installed version, given with ``--pymysql-src`` /
``--psycopg-src`` or the environment variables ``AURORA_SMARTDRIVER_PYMYSQL_SRC`` /
``AURORA_SMARTDRIVER_PSYCOPG_SRC``; a suite without one is skipped with a message saying how to
get it. Nothing of the checkout is copied into this repository: the files are copied to a
temporary directory for the run and deleted after.

For each suite: start a lab (one writer, one replica), provision what upstream's CI provisions
(databases, users, settings), run the suite bare, then wrapped (see ``upstream_plugin.py`` for
exactly what wrapping replaces), each in its own pytest process writing JUnit XML; then print
both runs' counts and every test that passes bare but not wrapped, grouped by cause.

Exit status: 0 when every wrapped-only failure is listed in ``upstream-differences.txt`` (the
differences docs/migration.md explains), 1 when a new one appears or a run breaks, and 0 with a
message when no suite could run. ``--write-differences`` rewrites that file from this run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from importlib import metadata
from pathlib import Path

from aurora_smartdriver import dsn as dsn_module
from aurora_smartdriver import lab

HERE = Path(__file__).resolve().parent
DIFFERENCES = HERE / "upstream-differences.txt"
PYTEST_TIMEOUT = 120
"""Per-test timeout (seconds): a hang becomes one failure, not a stuck run."""


@dataclass(frozen=True)
class Suite:
    name: str
    engine: str
    distribution: str
    env_var: str
    repository: str
    tag: Callable[[str], str]
    """The upstream tag of an installed version."""
    marker: str
    """A file that identifies the checkout."""


SUITES = {
    "pymysql": Suite(
        "pymysql",
        "mariadb",
        "PyMySQL",
        "AURORA_SMARTDRIVER_PYMYSQL_SRC",
        "https://github.com/PyMySQL/PyMySQL",
        lambda version: f"v{version}",
        "pymysql/tests/base.py",
    ),
    "psycopg": Suite(
        "psycopg",
        "postgresql",
        "psycopg",
        "AURORA_SMARTDRIVER_PSYCOPG_SRC",
        "https://github.com/psycopg/psycopg",
        lambda version: version,
        "tests/fix_db.py",
    ),
}
PSYCOPG_FILES = (
    "test_connection.py",
    "test_cursor.py",
    "test_cursor_client.py",
    "test_cursor_common.py",
    "test_cursor_raw.py",
    "test_cursor_server.py",
    "test_transaction.py",
    "test_errors.py",
    "test_copy.py",
    "test_psycopg_dbapi20.py",
)
PSYCOPG_INI = """\
[pytest]
addopts = -ra
filterwarnings =
    error
"""
PYMYSQL_INI = """\
[pytest]
addopts = -ra
"""
UPSTREAM_USER = "upstream"
UPSTREAM_PASSWORD = "upstream-pw"


@dataclass
class Run:
    mode: str
    outcomes: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    status: int = 0
    tail: str = ""

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes.values():
            counts[outcome] = counts.get(outcome, 0) + 1
        return counts

    def line(self) -> str:
        shown = ", ".join(f"{n} {k}" for k, n in sorted(self.counts().items()))
        return f"{self.mode:<8} {shown or 'no result'} in {self.seconds:.0f}s"


@dataclass
class Result:
    suite: str
    bare: Run
    wrapped: Run

    def differences(self) -> dict[str, str]:
        """Tests that pass bare but not wrapped, with the wrapped run's message."""
        return {
            test: self.wrapped.messages.get(test, self.wrapped.outcomes.get(test, "missing"))
            for test, outcome in sorted(self.bare.outcomes.items())
            if outcome == "passed" and self.wrapped.outcomes.get(test) != "passed"
        }


# -- finding and preparing the checkout ---------------------------------------------------------


def source_of(suite: Suite, given: str | None) -> Path | None:
    text = given or os.environ.get(suite.env_var)
    if not text:
        return None
    path = Path(text).expanduser().resolve()
    if not (path / suite.marker).is_file():
        raise SystemExit(f"{path} is not a {suite.distribution} checkout (no {suite.marker})")
    return path


def skip_message(suite: Suite) -> str:
    version = metadata.version(suite.distribution)
    return (
        f"==> {suite.name}: skipped, no checkout of {suite.distribution} given. Its tests are "
        f"not in any PyPI artifact; get them with\n"
        f"      git clone --depth 1 --branch {suite.tag(version)} {suite.repository} SRC\n"
        f"    and set {suite.env_var}=SRC (or pass --{suite.name}-src SRC)."
    )


def checkout_version(suite: Suite, source: Path) -> str | None:
    """The driver version the checkout declares, when it says."""
    if suite.name == "pymysql":
        text = (source / "pymysql" / "__init__.py").read_text()
        found = re.search(r"VERSION = \((\d+), (\d+), (\d+)", text)
        return ".".join(found.groups()) if found else None
    text = (source / "psycopg" / "pyproject.toml").read_text()
    found = re.search(r'^version = "([^"]+)"', text, re.MULTILINE)
    return found[1] if found else None


def prepare(suite: Suite, source: Path, work: Path) -> tuple[list[str], dict[str, str]]:
    """Copy the suite's files into `work`; the pytest arguments and environment to run them."""
    if suite.name == "pymysql":
        shutil.copytree(source / "pymysql" / "tests", work / "ext" / "tests")
        (work / "pytest.ini").write_text(PYMYSQL_INI)
        return ["ext/tests"], {"AURORA_UPSTREAM_PYMYSQL_TESTS": str(work / "ext")}
    shutil.copytree(source / "tests", work / "tests")
    (work / "pytest.ini").write_text(PSYCOPG_INI)
    return [f"tests/{name}" for name in PSYCOPG_FILES], {}


# -- the lab ----------------------------------------------------------------------------------


def provision(cluster: lab.Lab, suite: Suite, work: Path) -> dict[str, str]:
    """What upstream's CI sets up, on the lab's writer; the environment naming it."""
    writer = cluster.writer
    state = cluster.state()
    if suite.name == "pymysql":
        for sql in (
            "CREATE DATABASE IF NOT EXISTS test1 DEFAULT CHARACTER SET utf8mb4",
            "CREATE DATABASE IF NOT EXISTS test2 DEFAULT CHARACTER SET utf8mb4",
            f"CREATE USER IF NOT EXISTS '{UPSTREAM_USER}'@'%' IDENTIFIED BY '{UPSTREAM_PASSWORD}'",
            f"GRANT ALL PRIVILEGES ON *.* TO '{UPSTREAM_USER}'@'%' WITH GRANT OPTION",
            "CREATE USER IF NOT EXISTS 'test2'@'%' IDENTIFIED BY 'some password'",
            "GRANT ALL ON test2.* TO 'test2'@'%'",
            # The topology the library reads, readable by every user as on Aurora.
            "GRANT SELECT, EXECUTE ON aurora_lab.* TO 'test2'@'%'",
            "SET GLOBAL local_infile = ON",
        ):
            cluster.execute(writer, sql)
        databases = [
            {
                "host": writer.address,
                "port": writer.port,
                "user": UPSTREAM_USER,
                "password": UPSTREAM_PASSWORD,
                "database": "test1",
                "use_unicode": True,
                "local_infile": True,
            },
            {
                "host": writer.address,
                "port": writer.port,
                "user": "test2",
                "password": "some password",
                "database": "test2",
            },
        ]
        (work / "ext" / "tests" / "databases.json").write_text(json.dumps(databases))
        return {"AURORA_UPSTREAM_SERVER": f"{writer.address}:{writer.port}"}
    cluster.execute(
        writer,
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{UPSTREAM_USER}') "
        f"THEN CREATE ROLE {UPSTREAM_USER} LOGIN SUPERUSER PASSWORD '{UPSTREAM_PASSWORD}'; "
        "END IF; END $$",
    )
    libpq = (
        f"host={writer.address} port={writer.port} dbname={state.database} "
        f"user={UPSTREAM_USER} password={UPSTREAM_PASSWORD}"
    )
    return {"PSYCOPG_TEST_DSN": libpq, "AURORA_UPSTREAM_SERVER": f"{writer.address}:{writer.port}"}


def library_dsn(cluster: lab.Lab) -> str:
    """The lab cluster's DSN without user, password and database (the tests give those)."""
    spec = dsn_module.parse(cluster.dsn)
    bare = dsn_module.ConnectionSpec(
        engine=spec.engine,
        hosts=spec.hosts,
        settings=spec.settings,
        driver_params=spec.driver_params,
        mariadb=spec.mariadb,
    )
    return bare.to_dsn()


# -- running and reading the results ------------------------------------------------------------


def run_pytest(
    mode: str, work: Path, paths: list[str], env: dict[str, str], extra: list[str]
) -> Run:
    junit = work / f"junit-{mode}.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        "pytest.ini",
        "--rootdir",
        ".",
        "-q",
        "-p",
        "upstream_plugin",
        "-p",
        "no:aurora_smartdriver_lab",
        # pytest-asyncio, when installed next to the library, would take over the suites'
        # own async set-up (psycopg's runs on anyio) and warn, which psycopg's ini makes fatal.
        "-p",
        "no:asyncio",
        f"--junitxml={junit}",
        f"--timeout={PYTEST_TIMEOUT}",
        *paths,
        *extra,
    ]
    full_env = {
        **os.environ,
        **env,
        "AURORA_UPSTREAM_MODE": mode,
        # This directory for the plugin; the repository first, so that the library tested is
        # the one next to this script.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(HERE.parent), str(HERE), os.environ.get("PYTHONPATH")])
        ),
    }
    started = time.monotonic()
    done = subprocess.run(
        command, cwd=work, env=full_env, capture_output=True, text=True, check=False
    )
    run = Run(mode, seconds=time.monotonic() - started, status=done.returncode)
    run.tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
    if junit.exists():
        read_junit(junit, run)
    return run


def read_junit(path: Path, run: Run) -> None:
    # The XML is the one our own pytest run just wrote.
    for case in ET.parse(path).getroot().iter("testcase"):  # noqa: S314
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome, message = (
                    ("failed" if child.tag == "failure" else "error"),
                    (child.get("message") or ""),
                )
                break
            if child.tag == "skipped":
                is_xfail = (child.get("type") or "") == "pytest.xfail"
                outcome, message = ("xfailed" if is_xfail else "skipped"), child.get("message", "")
        if outcome == "passed" and run.outcomes.get(name) not in (None, "passed"):
            continue  # a teardown error reported as a second case: keep the error
        run.outcomes[name] = outcome
        if message:
            run.messages[name] = message


def cause_of(message: str) -> str:
    """The message with the details that vary between tests taken out, to group by."""
    first = message.strip().splitlines()[0] if message.strip() else "(no message)"
    first = re.sub(r"0x[0-9a-f]+", "0x…", first)
    first = re.sub(r"'[^']*'", "'…'", first)
    first = re.sub(r"-?\d+", "N", first)
    return first[:160]


def grouped(differences: dict[str, str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for test, message in differences.items():
        groups.setdefault(cause_of(message), []).append(test)
    return dict(sorted(groups.items(), key=lambda item: -len(item[1])))


def known_differences() -> dict[str, dict[str, str]]:
    """The entries `upstream-differences.txt` lists, per suite, each with the comment line above
    its group (the cause)."""
    known: dict[str, dict[str, str]] = {}
    if not DIFFERENCES.exists():
        return known
    cause = ""
    for raw in DIFFERENCES.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#"):
            cause = line.lstrip("# ")
        elif line:
            suite, _, test = line.partition(" ")
            known.setdefault(suite, {})[test.strip()] = cause
    return known


def write_differences(results: list[Result]) -> None:
    lines = [
        "# Upstream driver tests that pass bare but not through aurora_smartdriver.",
        "# Generated by `compliance/upstream.py --write-differences`; one line per test:",
        "# `<suite> <test id>`, grouped under the cause of the wrapped failure.",
        "# docs/migration.md explains each group; the proxy's fixes make the list shorter.",
    ]
    for result in results:
        for cause, tests in grouped(result.differences()).items():
            lines += ["", f"# {result.suite}: {cause} ({len(tests)})"]
            lines += [f"{result.suite} {test}" for test in tests]
    DIFFERENCES.write_text("\n".join(lines) + "\n")


# -- main -----------------------------------------------------------------------------------------


@dataclass
class Options:
    suites: list[Suite]
    sources: dict[str, str | None]
    pytest_args: list[str]
    write: bool
    junit_dir: Path | None


def run_suite(suite: Suite, source: Path, pytest_args: list[str], junit_dir: Path | None) -> Result:
    version = metadata.version(suite.distribution)
    declared = checkout_version(suite, source)
    print(
        f"==> {suite.name}: upstream tests from {source} (declares {declared}; installed {version})"
    )
    if declared != version:
        print(
            f"    note: the checkout is not the installed version's tag {suite.tag(version)}; "
            "tests of features the two do not share may fail both runs alike"
        )
    with tempfile.TemporaryDirectory(prefix=f"upstream-{suite.name}-") as tmp:
        work = Path(tmp)
        paths, env = prepare(suite, source, work)
        with lab.start(suite.engine, replicas=1, name="upstr") as cluster:
            env.update(provision(cluster, suite, work))
            env["AURORA_UPSTREAM_DSN"] = library_dsn(cluster)
            bare = run_pytest("bare", work, paths, env, pytest_args)
            wrapped = run_pytest("wrapped", work, paths, env, pytest_args)
        if junit_dir is not None:
            junit_dir.mkdir(parents=True, exist_ok=True)
            for mode in ("bare", "wrapped"):
                if (work / f"junit-{mode}.xml").exists():
                    shutil.copy(work / f"junit-{mode}.xml", junit_dir / f"{suite.name}-{mode}.xml")
    return Result(suite.name, bare, wrapped)


def report(results: list[Result]) -> int:
    known = known_differences()
    status = 0
    print("==> upstream driver suites, bare vs wrapped")
    for result in results:
        print(f"    {result.suite}:")
        for run in (result.bare, result.wrapped):
            print(f"      {run.line()}")
            if not run.outcomes or run.status > 1:
                print(f"      (pytest exit {run.status}; its last lines:)\n" + indent(run.tail, 8))
                status = 1
        differences = result.differences()
        causes = known.get(result.suite, {})
        listed = set(causes)
        new = {t: m for t, m in differences.items() if not listed_in(t, listed)}
        fixed = sorted(entry for entry in listed if not any(matches(t, entry) for t in differences))
        print(
            f"      pass bare, fail wrapped: {len(differences)} "
            f"({len(differences) - len(new)} listed in {DIFFERENCES.name}, {len(new)} new)"
        )
        by_cause: dict[str, list[str]] = {}
        for test in differences:
            entry = next((e for e in listed if matches(test, e)), None)
            label = causes[entry] if entry else "(not listed) " + cause_of(differences[test])
            by_cause.setdefault(label, []).append(test)
        for cause, tests in sorted(by_cause.items(), key=lambda item: -len(item[1])):
            print(f"        {len(tests):>4}  {cause}")
            for test in tests:
                print(f"                {test}")
        for test, message in new.items():
            print(f"      NEW: {test}: {cause_of(message)}")
            status = 1
        for test in fixed:
            print(f"      now passes wrapped (remove it from {DIFFERENCES.name}): {test}")
    return status


def matches(test: str, entry: str) -> bool:
    """Whether `entry` names `test`: exactly, or as a pattern where ``*`` is any text."""
    if "*" not in entry:
        return test == entry
    return fnmatchcase(test, entry.replace("[", "[[]"))


def listed_in(test: str, listed: set[str]) -> bool:
    return any(matches(test, entry) for entry in listed)


def indent(text: str, spaces: int) -> str:
    return "\n".join(" " * spaces + line for line in text.splitlines())


def parse_args(argv: list[str] | None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=(*SUITES, "both"), default="both")
    for suite in SUITES.values():
        parser.add_argument(
            f"--{suite.name}-src",
            default=None,
            metavar="SRC",
            help=f"a checkout of {suite.repository} (default: ${suite.env_var})",
        )
    parser.add_argument(
        "--write-differences",
        action="store_true",
        help=f"rewrite {DIFFERENCES.name} from this run's wrapped-only failures",
    )
    parser.add_argument(
        "--junit-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="keep each run's JUnit XML there (<suite>-bare.xml, <suite>-wrapped.xml)",
    )
    parser.add_argument("pytest_args", nargs="*", help="passed to pytest (after --)")
    args = parser.parse_args(argv)
    chosen = list(SUITES.values()) if args.suite == "both" else [SUITES[args.suite]]
    sources = {s.name: getattr(args, f"{s.name}_src") for s in SUITES.values()}
    return Options(chosen, sources, args.pytest_args, args.write_differences, args.junit_dir)


def found(options: Options) -> Iterator[tuple[Suite, Path]]:
    for suite in options.suites:
        source = source_of(suite, options.sources[suite.name])
        if source is None:
            print(skip_message(suite))
            continue
        yield suite, source


def main(argv: list[str] | None = None) -> int:
    options = parse_args(argv)
    results = [
        run_suite(suite, source, options.pytest_args, options.junit_dir)
        for suite, source in found(options)
    ]
    if not results:
        return 0
    status = report(results)
    if options.write:
        write_differences(results)
        print(f"==> wrote {DIFFERENCES}")
    return status


if __name__ == "__main__":
    sys.exit(main())
