"""Fork safety with real ``os.fork()`` on the lab, as gunicorn ``--preload`` and Celery do.

A ``Cluster`` made and used before the fork; children use it too. No child may touch the
parent's sockets, threads or locks: each gets machinery of its own, never sees another
process's rows, and its exit leaves the parent's sessions alive. The scenarios run as scripts
of their own so that the children exit as real workers do (``sys.exit``, atexit handlers).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

from aurora_smartdriver.lab import Lab

CHILDREN_SCRIPT = r"""
import json, os, sys
import aurora_smartdriver as asd

dsn, cluster_id, table = sys.argv[1:4]
cluster = asd.Cluster(dsn, cluster_id=cluster_id, pool_max_size=4)
with cluster.writer() as a, cluster.writer() as b:  # two idle pooled sockets, inherited
    for conn in (a, b):
        conn.cursor().execute("SELECT 1")
with cluster.writer() as conn:
    conn.cursor().execute(f"CREATE TABLE {table} (child INT, n INT)")
held = asd.connect(dsn, cluster_id=cluster_id)  # a connection of the parent's own
held_cur = held.cursor()
held_cur.execute("SELECT 1")
held_cur.fetchall()

sys.stdout.flush()
children = []
for child in (1, 2):
    pid = os.fork()
    if pid == 0:
        errors = []
        try:
            for n in range(40):
                with cluster.writer() as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT %s, %s", (child, n))
                    row = tuple(cur.fetchall()[0])
                    if row != (child, n):
                        errors.append(f"child {child} asked for {(child, n)}, got {row}")
                    cur.execute(f"INSERT INTO {table} VALUES (%s, %s)", (child, n))
            with cluster.writer() as conn:
                cur = conn.cursor()
                cur.execute(f"SELECT count(*) FROM {table} WHERE child = %s", (child,))
                if cur.fetchall()[0][0] != 40:
                    errors.append(f"child {child}: its 40 rows are not all there")
        except Exception as exc:
            errors.append(f"child {child}: {type(exc).__name__}: {exc}")
        if errors:
            print(json.dumps({"child": child, "errors": errors}), file=sys.stderr, flush=True)
        sys.exit(1 if errors else 0)  # a worker's exit: atexit handlers run
    children.append(pid)

codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
parent_errors = []
try:
    for _ in range(6):  # the idle sockets made before the fork, and new ones
        with cluster.writer() as conn:
            cur = conn.cursor()
            cur.execute("SELECT %s", (99,))
            row = tuple(cur.fetchall()[0])
            if row != (99,):
                parent_errors.append(f"parent got {row}")
    held_cur.execute("SELECT 2")
    if tuple(held_cur.fetchall()[0]) != (2,):
        parent_errors.append("held connection answered wrong")
    with cluster.writer() as conn:
        cur = conn.cursor()
        cur.execute(f"SELECT count(*) FROM {table}")
        total = cur.fetchall()[0][0]
        cur.execute(f"DROP TABLE {table}")
except Exception as exc:
    parent_errors.append(f"parent: {type(exc).__name__}: {exc}")
    total = -1
held.close()
cluster.close()
print(json.dumps({"codes": codes, "parent_errors": parent_errors, "rows": total}), flush=True)
"""


def test_children_of_a_forked_cluster_share_nothing_and_the_parent_survives(
    aurora_lab: Lab,
) -> None:
    table = f"fork_{uuid.uuid4().hex[:12]}"
    done = subprocess.run(
        [sys.executable, "-c", CHILDREN_SCRIPT, aurora_lab.dsn, uuid.uuid4().hex, table],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["codes"] == [0, 0], done.stderr[-3000:]
    assert result["parent_errors"] == []
    assert result["rows"] == 80


FAILOVER_SCRIPT = r"""
import json, os, sys, time
import aurora_smartdriver as asd

dsn, cluster_id = sys.argv[1:3]
cluster = asd.Cluster(dsn, cluster_id=cluster_id, fast_refresh_interval="0.05s")
with cluster.writer() as conn:
    conn.cursor().execute("SELECT 1")
sys.stdout.flush()
pid = os.fork()
if pid == 0:
    outcome = {}
    try:
        with cluster.writer() as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            outcome["before"] = conn.instance_id
        print("ready", flush=True)
        sys.stdin.readline()  # the lab fails over now
        deadline = time.monotonic() + 30
        while True:
            try:
                with cluster.writer() as conn:
                    cur = conn.cursor()
                    cur.execute("SELECT 1")
                    cur.fetchall()
                    outcome["after"] = conn.instance_id
                    break
            except asd.FailoverSucceeded:
                if time.monotonic() > deadline:
                    raise
    except Exception as exc:
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(outcome), flush=True)
    sys.exit(0 if "after" in outcome else 1)
code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
cluster.close()
print(json.dumps({"child_code": code}), flush=True)
"""


def test_a_forked_child_survives_a_failover(aurora_lab: Lab) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", FAILOVER_SCRIPT, aurora_lab.dsn, uuid.uuid4().hex],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline().strip() == "ready"
        report = aurora_lab.failover()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    lines = [json.loads(line) for line in out.strip().splitlines()]
    child = next(line for line in lines if "after" in line or "error" in line)
    assert child.get("after") == report.new_writer, (child, err[-3000:])
    assert lines[-1] == {"child_code": 0}


SQLALCHEMY_SCRIPT = r"""
import json, os, sys
import sqlalchemy as sa
dsn, cid = sys.argv[1:3]
url = dsn.replace("postgresql://", "postgresql+aurora_psycopg://").replace("mariadb://", "mysql+aurora_pymysql://")
url += f"&cluster_id={cid}"
engine = sa.create_engine(url, pool_size=2)
with engine.connect() as c, engine.connect() as d:
    c.execute(sa.text("SELECT 1")); d.execute(sa.text("SELECT 1"))
sys.stdout.flush()
pids = []
for child in (1, 2):
    pid = os.fork()
    if pid == 0:
        engine.dispose(close=False)
        errors = []
        try:
            for n in range(30):
                with engine.connect() as c:
                    row = tuple(c.execute(sa.text("SELECT :a, :b"), {"a": child, "b": n}).one())
                    if row != (child, n):
                        errors.append(f"{child}: {row}")
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        if errors:
            print(json.dumps(errors), file=sys.stderr, flush=True)
        sys.exit(1 if errors else 0)
    pids.append(pid)
codes = [os.waitstatus_to_exitcode(os.waitpid(p, 0)[1]) for p in pids]
errs = []
try:
    for n in range(5):
        with engine.connect() as c:
            if tuple(c.execute(sa.text("SELECT :a"), {"a": n}).one()) != (n,):
                errs.append("parent wrong row")
except Exception as exc:
    errs.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"codes": codes, "parent": errs}), flush=True)
"""


def test_sqlalchemy_dispose_recipe_in_forked_children(aurora_lab: Lab) -> None:
    """SQLAlchemy's advice for pre-fork servers: ``engine.dispose(close=False)`` in the child.
    The library's own pools under the engine must be the child's too."""
    done = subprocess.run(
        [sys.executable, "-c", SQLALCHEMY_SCRIPT, aurora_lab.dsn, uuid.uuid4().hex],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"codes": [0, 0], "parent": []}, done.stderr[-3000:]
