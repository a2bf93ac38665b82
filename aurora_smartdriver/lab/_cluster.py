"""The lab cluster: start, inspect, break, fail over and tear down a local replicated cluster.

Every operation reads and writes the lab's state file under its lock, so a lab started by one
process (``lab up``) can be failed over by another (``lab failover --state ...``) and torn down
by a third. The supervisor process (DNS server and metadata heartbeat) follows the state file.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aurora_smartdriver.lab import _custom, _firewall, _net, _procs, _rds_api, _rds_proxy
from aurora_smartdriver.lab import _state as st
from aurora_smartdriver.lab._engine import Engine, Fresh, LabError, Unsupported, node_dir
from aurora_smartdriver.lab._mariadb_lag import Lagger
from aurora_smartdriver.lab._pause import Pauser, knockers
from aurora_smartdriver.lab._proxy import FaultProxy

if TYPE_CHECKING:
    from aurora_smartdriver.lab._aio import AsyncLab

LAB_DIR_PREFIX = "asd-lab-"
ENGINES = ("postgresql", "mariadb")


def engine_for(name: str) -> Engine:
    """The engine implementation for ``postgresql`` or ``mariadb``."""
    if name == "postgresql":
        from aurora_smartdriver.lab._postgresql import PostgreSQL

        return PostgreSQL()
    if name in ("mariadb", "mysql"):
        from aurora_smartdriver.lab._mariadb import MariaDB

        return MariaDB()
    raise LabError(f"unknown lab engine {name!r}; choose one of: {', '.join(ENGINES)}")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A node as the lab sees it now."""

    id: str
    host: str  # the instance endpoint name (served by the lab's DNS)
    address: str
    port: int
    role: str  # "writer" | "reader"
    status: str  # "running" | "crashed" | "hung" | "stopped" | "paused"
    partitioned: bool
    pid: int | None
    lag: float = 0.0  # seconds of injected replica lag (Lab.lag)
    region: str = st.REGION  # the node's region (a global database has several)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "host": self.host,
            "address": self.address,
            "port": self.port,
            "role": self.role,
            "status": self.status,
            "partitioned": self.partitioned,
            "pid": self.pid,
            "lag": self.lag,
            "region": self.region,
        }


@dataclass(frozen=True, slots=True)
class FailoverReport:
    """What a failover did and when (wall-clock times, seconds since the epoch)."""

    old_writer: str
    new_writer: str
    how: str
    started_at: float
    promoted_at: float  # the new writer is out of recovery / read_only is off
    writable_at: float  # a synchronously replicated commit on the new writer has completed
    completed_at: float  # replicas repointed, metadata published
    dns_flip_at: float  # when the cluster endpoint starts answering with the new writer

    @property
    def duration_s(self) -> float:
        """Seconds from the start of the failover to its completion (`completed_at`)."""
        return self.completed_at - self.started_at

    @property
    def duration(self) -> float:
        """The same as `duration_s`, the name it had first (kept for compatibility)."""
        return self.duration_s

    def to_json(self) -> dict[str, Any]:
        return {
            "old_writer": self.old_writer,
            "new_writer": self.new_writer,
            "how": self.how,
            "started_at": self.started_at,
            "promoted_at": self.promoted_at,
            "writable_at": self.writable_at,
            "completed_at": self.completed_at,
            "dns_flip_at": self.dns_flip_at,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True, slots=True)
class PauseReport:
    """A paused node's story (`Lab.pause_report`): wall-clock times, None until they happen."""

    knocked_at: float | None  # the first connection attempt
    resumed_at: float | None  # the node answers again (``resume_delay`` after the knock)
    attempts: int  # distinct connection attempts seen while it was paused


def _node_info(lab: st.LabState, node: st.NodeState) -> NodeInfo:
    status = node.status
    if status in ("running", "hung", "paused") and not _procs.alive(node.pid):
        status = "crashed"  # died behind the lab's back
    return NodeInfo(
        id=node.id,
        host=lab.instance_endpoint(node.id),
        address=node.address,
        port=node.port,
        role=node.role,
        status=status,
        partitioned=node.partitioned,
        pid=node.pid,
        lag=node.lag,
        region=node.region,
    )


def _dsn(lab: st.LabState, host: str, *, pattern: bool = True) -> str:
    scheme = "postgresql" if lab.engine == "postgresql" else "mariadb"
    params = [f"dns_server={lab.dns.address}:{lab.dns.port}"]
    if pattern:  # a proxy's DSN names no instance: the proxy hides them
        params.append(f"instance_host_pattern={lab.instance_host_pattern}")
    if lab.engine == "mariadb":
        params += ["replica_status_schema=aurora_lab", "read_only_variable=read_only"]
    if lab.tls_ca is not None:
        # Verify the server's certificate and name: the library keeps the name while it
        # connects to the address it resolved, so verification holds through its own DNS.
        ca = quote(lab.tls_ca, safe="/")
        if lab.engine == "postgresql":
            params += ["sslmode=verify-full", f"sslrootcert={ca}"]
        else:
            params += [f"ssl_ca={ca}", "ssl_verify_identity=on"]
    return (
        f"{scheme}://{quote(lab.user, safe='')}:{quote(lab.password, safe='')}@{host}:{lab.port}"
        f"/{lab.database}?" + "&".join(params)
    )


# Labs started by this interpreter, torn down at exit if the caller did not.
_started: weakref.WeakSet[Lab] = weakref.WeakSet()


@atexit.register
def _down_at_exit() -> None:
    for lab in list(_started):
        with contextlib.suppress(Exception):
            lab.down()


class Lab:
    """A running lab cluster. Use :meth:`start` to create one and :meth:`attach` to find one."""

    def __init__(self, state_path: Path, *, claim: _net.Claim | None = None) -> None:
        self.state_path = Path(state_path)
        self._claim = claim
        self._proxies: dict[str, FaultProxy] = {}
        self._laggers: dict[str, Lagger] = {}  # MariaDB sub-second lag, held by this process
        self._pausers: dict[str, Pauser] = {}  # paused nodes waiting for a knock (Lab.pause)
        self._engine: Engine | None = None
        self._lock = threading.RLock()

    # -- creation ------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        engine: str = "postgresql",
        *,
        replicas: int = 2,
        name: str = "lab",
        dns_ttl: int = 5,
        dns_lag: float = 0.0,
        port: int | None = None,
        heartbeat_interval: float = 1.0,
        owned: bool = True,
        timeout: float = 60.0,
        tls: bool = False,
    ) -> Lab:
        """Start a cluster: one writer and ``replicas`` readers, DNS and metadata heartbeat.

        With ``owned`` (the default) the lab is torn down when this process exits, even if it
        is killed (the supervisor notices); ``owned=False`` leaves it running for ``lab down``.
        With ``tls`` the nodes also serve TLS with certificates from a CA of the lab's own,
        naming the cluster's endpoints but no address, and the DSNs verify them (see
        ``aurora_smartdriver.lab._tls``); connections without TLS are still accepted.
        """
        if replicas < 0:
            raise LabError(f"replicas must be 0 or more, not {replicas}")
        if not name.replace("-", "").isalnum() or not name[0].isalpha() or len(name) > 40:
            raise LabError(
                f"lab name must be letters, digits and '-' starting with a letter: {name!r}"
            )
        impl = engine_for(engine)
        if tls:
            try:
                from aurora_smartdriver.lab import _tls
            except ImportError as exc:
                raise LabError(
                    f"a TLS lab needs the cryptography package ({exc}); "
                    "install it with `pip install 'aurora-smartdriver[lab]'`"
                ) from exc
        _check_socket_room(tempfile.gettempdir(), f"{name}-instance-{replicas + 1}")
        claim = _net.claim(
            replicas + 1,
            port or impl.default_port,
            53 if os.geteuid() == 0 else 10053,
        )
        lab_dir = Path(tempfile.mkdtemp(prefix=LAB_DIR_PREFIX))
        # Servers may run as another account (postgres) and need to enter.
        os.chmod(lab_dir, 0o755)  # noqa: S103
        state = st.LabState(
            engine=impl.name,
            name=name,
            cluster_hash=secrets.token_hex(6),
            dir=str(lab_dir),
            prefix=claim.prefix,
            port=claim.port,
            user="app",
            password=secrets.token_urlsafe(12),
            database="app",
            repl_password=secrets.token_urlsafe(12),
            dns=st.DNSState(
                address=claim.address(_net.DNS_HOST),
                port=claim.dns_port,
                ttl=dns_ttl,
                lag=dns_lag,
                cluster_target=f"{name}-instance-1",
            ),
            owner_pid=os.getpid() if owned else None,
            heartbeat_interval=heartbeat_interval,
            server_user=_procs.server_user() if impl.name == "postgresql" else None,
            replicas_wanted=replicas,
            tls_ca=str(_tls.ca_path(lab_dir)) if tls else None,
        )
        for _ in range(replicas + 1):
            _new_node(state, claim.prefix, "writer" if not state.nodes else "reader")
        path = st.state_path(lab_dir)
        st.save(path, state)
        lab = cls(path, claim=claim)
        lab._engine = impl
        _started.add(lab)
        try:
            lab._bring_up(timeout)
        except BaseException:
            lab.down()
            raise
        if not owned:
            _started.discard(lab)
        return lab

    @classmethod
    def attach(cls, state_path: str | os.PathLike[str]) -> Lab:
        """A handle on a lab started elsewhere (for example by ``lab up``)."""
        lab = cls(Path(state_path))
        lab.state()  # fail early with a clear message when there is no such lab
        return lab

    def _bring_up(self, timeout: float) -> None:
        state = self.state()
        engine = self.engine
        writer = state.writer
        assert writer is not None
        if state.tls_ca is not None:
            from aurora_smartdriver.lab import _tls  # needs cryptography: only for TLS labs

            _tls.create_ca(state)
        engine.prepare(state, writer, None)
        writer.pid = engine.start(state, writer)
        writer.status = "running"
        st.save(self.state_path, state)
        engine.wait_ready(state, writer, timeout)
        engine.bootstrap(state, writer)
        with ThreadPoolExecutor(max_workers=max(1, len(state.readers))) as pool:
            list(pool.map(lambda n: self._start_replica(state, n, writer, timeout), state.readers))
        st.save(self.state_path, state)
        if state.readers:
            engine.set_sync(state, writer, True)
        self._start_supervisor(state)
        engine.publish(state, writer, {n.id: Fresh(0.0, 0.0) for n in state.nodes})
        self.wait_replicated(timeout)

    def _start_replica(
        self, state: st.LabState, node: st.NodeState, writer: st.NodeState, timeout: float
    ) -> None:
        engine = self.engine
        engine.prepare(state, node, writer)
        node.pid = engine.start(state, node)
        node.status = "running"
        engine.wait_ready(state, node, timeout)
        engine.attach_replica(state, node, writer)

    def _start_supervisor(self, state: st.LabState) -> None:
        assert self._claim is not None
        log = open(Path(state.dir) / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "aurora_smartdriver.lab._supervisor",
                    str(self.state_path),
                    str(self._claim.lock.fileno()),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=(self._claim.lock.fileno(),),
            )
        finally:
            log.close()
        _procs._children[proc.pid] = proc
        state.supervisor_pid = proc.pid
        st.save(self.state_path, state)
        ready = Path(state.dir) / "supervisor.ready"
        deadline = time.monotonic() + 15
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                out = (Path(state.dir) / "supervisor.log").read_text(errors="replace")
                raise LabError(f"the lab supervisor did not start:\n{out[-2000:]}")
            time.sleep(0.01)

    # -- reading -------------------------------------------------------------------------
    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = engine_for(self.state().engine)
        return self._engine

    def state(self) -> st.LabState:
        """The lab's state as the state file says now."""
        return st.load(self.state_path)

    @property
    def name(self) -> str:
        return self.state().name

    @property
    def dsn(self) -> str:
        """URL through the cluster endpoint, with the app user, the DNS server and the pattern."""
        state = self.state()
        return _dsn(state, state.cluster_endpoint)

    @property
    def reader_dsn(self) -> str:
        state = self.state()
        return _dsn(state, state.reader_endpoint)

    def instance_dsn(self, node: str | NodeInfo) -> str:
        state = self.state()
        return _dsn(state, state.instance_endpoint(_id(node)))

    @property
    def dns(self) -> tuple[str, int]:
        state = self.state()
        return (state.dns.address, state.dns.port)

    @property
    def nodes(self) -> list[NodeInfo]:
        state = self.state()
        return [_node_info(state, n) for n in state.nodes]

    def node(self, node: str | NodeInfo) -> NodeInfo:
        state = self.state()
        return _node_info(state, state.node(_id(node)))

    @property
    def writer(self) -> NodeInfo:
        state = self.state()
        if state.writer is None:
            raise LabError("the lab has no writer")
        return _node_info(state, state.writer)

    @property
    def readers(self) -> list[NodeInfo]:
        state = self.state()
        return [_node_info(state, n) for n in state.readers]

    def connect_kwargs(self, node: str | NodeInfo, *, user: str | None = None) -> dict[str, Any]:
        """Keyword arguments for a plain driver connecting straight to a node's address."""
        state = self.state()
        target = state.node(_id(node))
        kwargs: dict[str, Any] = {
            "host": target.address,
            "port": target.port,
            "user": user or state.user,
            "password": state.password,
        }
        kwargs["dbname" if state.engine == "postgresql" else "database"] = state.database
        return kwargs

    def info(self) -> dict[str, Any]:
        """The JSON document ``lab up --json`` prints."""
        state = self.state()
        return {
            "engine": state.engine,
            "name": state.name,
            "dsn": _dsn(state, state.cluster_endpoint),
            "reader_dsn": _dsn(state, state.reader_endpoint),
            "user": state.user,
            "password": state.password,
            "database": state.database,
            "port": state.port,
            "dns": {
                "address": state.dns.address,
                "port": state.dns.port,
                "ttl": state.dns.ttl,
                "lag": state.dns.lag,
            },
            "endpoints": {
                "cluster": state.cluster_endpoint,
                "reader": state.reader_endpoint,
                "instance_host_pattern": state.instance_host_pattern,
            },
            "tls_ca": state.tls_ca,
            "nodes": [_node_info(state, n).to_json() for n in state.nodes],
            "state": str(self.state_path),
        }

    def execute(self, node: str | NodeInfo, sql: str) -> list[tuple[object, ...]]:
        """Run one statement as the administrator on a node (for tests and checks)."""
        state = self.state()
        return self.engine.execute(state, state.node(_id(node)), sql)

    # -- changing ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _change(self) -> Iterator[st.LabState]:
        with self._lock, st.locked(self.state_path):
            state = self.state()
            yield state
            st.save(self.state_path, state)

    def crash(self, node: str | NodeInfo) -> None:
        """Kill -9 every process of a node (new connects are refused, open ones break)."""
        with self._change() as state:
            target = state.node(_id(node))
            self._kill(state, target)
            target.status = "crashed"
            self._relax_sync_if_alone(state)

    def _relax_sync_if_alone(self, state: st.LabState) -> None:
        """With no replica left, stop waiting for one: Aurora's storage quorum does not
        depend on reader instances, so losing every reader must not stall commits."""
        writer = state.writer
        if writer is None or writer.status != "running" or not _procs.alive(writer.pid):
            return
        if not any(n.status == "running" and _procs.alive(n.pid) for n in state.readers):
            self.engine.set_sync(state, writer, False)

    def _kill(self, state: st.LabState, node: st.NodeState) -> None:
        if node.pid is not None:
            _procs.kill_tree(node.pid)
            self.engine.after_kill(state, node)
        node.pid = None

    def hang(self, node: str | NodeInfo) -> None:
        """SIGSTOP every process of a node: TCP connects complete, nothing answers."""
        with self._change() as state:
            target = _running(state, _id(node))
            _procs.signal_tree(target.pid or 0, signal.SIGSTOP)
            target.status = "hung"

    def resume(self, node: str | NodeInfo) -> None:
        """Undo :meth:`hang`."""
        with self._change() as state:
            target = state.node(_id(node))
            if target.status != "hung":
                raise LabError(f"{target.id} is {target.status}, not hung")
            _procs.signal_tree(target.pid or 0, signal.SIGCONT)
            target.status = "running"

    def pause(self, node: str | NodeInfo, *, resume_delay: float = 15.0) -> None:
        """Pause a node as Aurora Serverless v2 does at 0 ACUs, until someone connects.

        Its application sessions end (Aurora pauses only an instance without connections),
        then its processes stop: TCP connects still complete, the handshake waits. The first
        connection attempt resumes it ``resume_delay`` seconds later (Aurora: about 15 s);
        that attempt, and any made meanwhile, then complete. A paused reader stays a member of
        the cluster: in the metadata (fresh rows, no lag) and behind the reader endpoint. A
        paused writer (Aurora pauses it with the tier 0 and 1 readers, when the whole group
        has had no connection) stops the metadata's refresh and every write until it resumes.
        """
        if isinstance(resume_delay, bool) or not isinstance(resume_delay, int | float):
            raise LabError(f"resume_delay must be a number of seconds, not {resume_delay!r}")
        if not 0 <= resume_delay <= 600:
            raise LabError(f"resume_delay must be between 0 and 600 seconds, not {resume_delay}")
        from aurora_smartdriver.lab._bluegreen import _drop_sessions

        with self._change() as state:
            target = _running(state, _id(node))
            if target.lag or target.id in self._laggers:
                self._set_lag(state, target, 0.0)
            _drop_sessions(self, state, [target])
            target.status = "paused"  # the supervisor's probes leave it alone from now on
            st.save(self.state_path, state)
            _until_closed(target.address, target.port)
            _procs.signal_tree(target.pid or 0, signal.SIGSTOP)
            self._relax_sync_if_alone(state)
            node_id = target.id
            pauser = Pauser(
                node_id,
                target.address,
                target.port,
                float(resume_delay),
                lambda: self._resumed(node_id),
                # A connection that slipped in before the stop (a probe of the supervisor's)
                # is not a knock.
                ignore=knockers(target.address, target.port),
            )
            self._pausers[node_id] = pauser
        pauser.start()

    def wake(self, node: str | NodeInfo) -> None:
        """Resume a paused node now, whether or not anyone knocked (undoes :meth:`pause`)."""
        self._stop_pauser(_id(node))
        with self._change() as state:
            target = state.node(_id(node))
            if target.status != "paused":
                raise LabError(f"{target.id} is {target.status}, not paused")
            self._wake(state, target)

    def pause_report(self, node: str | NodeInfo) -> PauseReport:
        """What happened to the node since this process last paused it: when it was first
        knocked on, when it resumed, and how many connection attempts it saw meanwhile."""
        pauser = self._pausers.get(_id(node))
        if pauser is None:
            raise LabError(f"{_id(node)} was not paused by this process")
        return PauseReport(pauser.knocked_at, pauser.resumed_at, pauser.attempts)

    def _resumed(self, node_id: str) -> None:
        """The knock's delay is over: resume the node (called by its `Pauser`)."""
        with self._change() as state:
            target = next((n for n in state.nodes if n.id == node_id), None)
            if target is not None and target.status == "paused":
                self._wake(state, target)

    def _wake(self, state: st.LabState, node: st.NodeState) -> None:
        """Resume a paused node (under `_change`); the state says so before it answers."""
        node.status = "running"
        st.save(self.state_path, state)
        _procs.signal_tree(node.pid or 0, signal.SIGCONT)
        writer = state.writer
        if writer is not None and writer.status == "running" and _procs.alive(writer.pid):
            # Commits wait for a replica only while one runs (a paused one would hold them).
            running = [n for n in state.readers if n.status == "running" and _procs.alive(n.pid)]
            self.engine.set_sync(state, writer, bool(running))

    def _stop_pauser(self, node_id: str) -> None:
        """Stop watching a node for a knock, outside the lab's lock (its thread takes it)."""
        pauser = self._pausers.get(node_id)
        if pauser is not None:
            pauser.stop()

    def partition(self, node: str | NodeInfo) -> None:
        """Drop every packet to and from a node's address and port (needs root and iptables)."""
        with self._change() as state:
            target = state.node(_id(node))
            _firewall.partition(state.prefix, target.id, target.address, target.port)
            target.partitioned = True

    def heal(self, node: str | NodeInfo) -> None:
        """Undo :meth:`partition`."""
        with self._change() as state:
            target = state.node(_id(node))
            _firewall.heal(state.prefix, target.id, target.address, target.port)
            target.partitioned = False

    def lag(self, node: str | NodeInfo, seconds: float, *, in_process: bool = True) -> None:
        """Make a replica apply the writer's commits ``seconds`` late; 0 undoes it.

        Reads on that replica miss writes younger than ``seconds``, as on a replica that
        falls behind. PostgreSQL: ``recovery_min_apply_delay`` (millisecond steps). MariaDB:
        a thread of this process that holds the replica's SQL thread back (any lag; it ends
        with the lab object), or with ``in_process=False`` ``MASTER_DELAY`` (whole seconds
        only, against second-resolution event times; it outlives this process, as the CLI
        needs). See docs/lab.md. A failover ends the fault.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise LabError(f"lag must be a number of seconds, not {seconds!r}")
        if not 0 <= seconds <= 3600:
            raise LabError(f"lag must be between 0 and 3600 seconds, not {seconds!r}")
        with self._change() as state:
            target = _running(state, _id(node))
            if target.role != "reader":
                raise LabError(f"{target.id} is the writer; only a replica can lag")
            self._set_lag(state, target, float(seconds), in_process=in_process)

    def _set_lag(
        self, state: st.LabState, node: st.NodeState, seconds: float, *, in_process: bool = True
    ) -> None:
        lagger = self._laggers.pop(node.id, None)
        if lagger is not None:
            lagger.stop()
        if state.engine == "postgresql" or not in_process or seconds == 0:
            self.engine.set_lag(state, node, seconds)
        else:
            self.engine.set_lag(state, node, 0.0)
            writer = state.writer
            if writer is None:
                raise LabError("the lab has no writer for a replica to lag behind")
            engine: Any = self.engine
            self._laggers[node.id] = Lagger(
                lambda: engine._connect(state, writer, 5.0),
                lambda: engine._connect(state, node, 5.0),
                seconds,
                node.id,
            )
        node.lag = seconds

    def restart(self, node: str | NodeInfo, timeout: float = 30.0) -> None:
        """Start a crashed or stopped node again on its own data, in the role it had.

        A writer is back once a replica acknowledges its commits again; a PostgreSQL replica
        held back by :meth:`lag` reconnects only when its delay has passed, and commits wait.
        """
        with self._change() as state:
            target = state.node(_id(node))
            if target.status in ("running", "hung") and _procs.alive(target.pid):
                raise LabError(f"{target.id} is {target.status}; crash or stop it first")
            target.pid = self.engine.start(state, target)
            target.status = "running"
            st.save(self.state_path, state)
            self.engine.wait_ready(state, target, timeout)
            writer = state.writer
            if target.role == "reader" and writer is not None and writer.status == "running":
                self.engine.set_sync(state, writer, True)
            elif target is writer:
                # A restarted MariaDB writer comes back with semi-synchronous commits off (a
                # SET GLOBAL does not survive): commits must wait for a replica again.
                running = [n for n in state.readers if n.status == "running"]
                self.engine.set_sync(state, target, bool(running))
                # and the replicas are back on it: those that can be (a partitioned one cannot,
                # nor a lagged PostgreSQL one before its delay has passed; commits wait for it).
                reachable = [
                    n
                    for n in running
                    if not n.partitioned and (n.lag == 0 or self.engine.lagged_replicas_reconnect)
                ]
                deadline = time.monotonic() + timeout
                while reachable and not self.engine.sync_active(state, target):
                    if time.monotonic() > deadline:
                        raise LabError(f"no replica acknowledges {target.id}'s commits again")
                    time.sleep(0.05)

    def failover(
        self,
        to: str | NodeInfo | None = None,
        *,
        how: str = "crash",
        dns_lag: float | None = None,
    ) -> FailoverReport:
        """Replace the writer: crash (kill -9) or stop it, promote a replica, repoint the rest.

        The promoted replica is ``to`` or the most advanced one; a ``to`` that is behind
        first catches up from the most advanced replica, so no acknowledged commit is lost.
        The cluster endpoint's DNS answer flips ``dns_lag`` seconds later (default: the lab's).
        """
        if how not in ("crash", "stop"):
            raise LabError(f"how must be 'crash' or 'stop', not {how!r}")
        engine = self.engine
        with self._change() as state:
            started = time.time()
            old = state.writer
            if old is None:
                raise LabError("the lab has no writer to fail over from")
            if how == "stop" and old.status == "running" and _procs.alive(old.pid):
                # Fast shutdown: PostgreSQL on SIGINT, MariaDB on SIGTERM.
                sig = signal.SIGINT if state.engine == "postgresql" else signal.SIGTERM
                os.kill(old.pid or 0, sig)
                if not _procs.wait_gone(old.pid or 0, 30):
                    raise LabError(f"{old.id} did not stop within 30s")
                self._kill(state, old)
                old.status = "stopped"
            else:
                self._kill(state, old)
                old.status = "crashed"
            old.role = "reader"
            candidates = [n for n in state.readers if n.status == "running" and _procs.alive(n.pid)]
            if not candidates:
                old.role = "writer"
                raise LabError("no running replica to promote; the writer is down")
            for node in candidates:  # a failover ends the lag fault: promotion must not wait on it
                if node.lag or node.id in self._laggers:
                    self._set_lag(state, node, 0.0)
            positions = self._positions(state, candidates)
            best = max(candidates, key=lambda n: (positions[n.id], -n.index))
            target = best if to is None else state.node(_id(to))
            if target not in candidates:
                raise LabError(f"cannot promote {target.id}: it is not a running replica")
            if positions[target.id] < positions[best.id]:
                self._catch_up(state, target, best, positions[best.id])
            engine.promote(state, target)
            promoted = time.time()
            target.role = "writer"
            others = [n for n in candidates if n is not target]
            with ThreadPoolExecutor(max_workers=max(1, len(others))) as pool:
                list(pool.map(lambda n: engine.repoint(state, n, target), others))
            engine.set_sync(state, target, bool(others))
            engine.publish(state, target, {target.id: Fresh(0.0, 0.0)})
            writable = time.time()
            lag = state.dns.lag if dns_lag is None else dns_lag
            _settle_dns(state.dns, time.time())
            if lag <= 0:
                state.dns.cluster_target = target.id
                state.dns.pending_target = state.dns.pending_at = None
                flip = writable
            else:
                flip = time.time() + lag
                state.dns.pending_target, state.dns.pending_at = target.id, flip
            state.failovers += 1
            return FailoverReport(
                old_writer=old.id,
                new_writer=target.id,
                how=how,
                started_at=started,
                promoted_at=promoted,
                writable_at=writable,
                completed_at=time.time(),
                dns_flip_at=flip,
            )

    def _positions(self, state: st.LabState, nodes: list[st.NodeState]) -> dict[str, int]:
        engine = self.engine

        def measure(node: st.NodeState) -> int:
            engine.drain(state, node, 10.0)
            return engine.position(state, node)

        with ThreadPoolExecutor(max_workers=max(1, len(nodes))) as pool:
            return dict(zip([n.id for n in nodes], pool.map(measure, nodes), strict=True))

    def _catch_up(
        self, state: st.LabState, target: st.NodeState, source: st.NodeState, goal: int
    ) -> None:
        """Let ``target`` replicate from ``source`` (cascading) until it reaches ``goal``."""
        engine = self.engine
        engine.repoint(state, target, source)
        deadline = time.monotonic() + 20
        while True:
            engine.drain(state, target, 10.0)
            if engine.position(state, target) >= goal:
                return
            if time.monotonic() > deadline:
                raise LabError(f"{target.id} could not catch up with {source.id} for promotion")
            time.sleep(0.02)

    def rejoin(self, node: str | NodeInfo, timeout: float = 60.0) -> None:
        """Bring a node back as a replica of the current writer, from a fresh copy.

        This is how a crashed former writer returns, as on Aurora where it restarts as a
        reader; a fresh copy avoids transactions it wrote but never replicated.
        """
        with self._change() as state:
            target = state.node(_id(node))
            writer = state.writer
            if writer is None or writer is target:
                raise LabError(f"cannot rejoin {target.id}: it is the writer (fail over first)")
            self._kill(state, target)
            target.role = "reader"
            target.partitioned = False
            target.session_id = str(uuid.uuid4())
            self._start_replica(state, target, writer, timeout)
            self.engine.set_sync(state, writer, True)
            self.engine.publish(state, writer, {target.id: Fresh(0.0, 0.0)})
        self.wait_replicated(timeout)  # back in service once it has caught up, as on Aurora

    def remove(self, node: str | NodeInfo, *, drain: float = 2.0) -> None:
        """Delete a replica as Aurora does: it leaves the metadata and the reader endpoint at
        once, keeps serving the connections it has for ``drain`` seconds, then shuts down
        (process, data and instance name go). Returns once it is gone."""
        if isinstance(drain, bool) or not isinstance(drain, int | float) or not 0 <= drain <= 600:
            raise LabError(f"drain must be between 0 and 600 seconds, not {drain!r}")
        self._stop_pauser(_id(node))
        with self._change() as state:
            target = state.node(_id(node))
            if target.role == "writer":
                raise LabError(f"cannot remove {target.id}: it is the writer (fail over first)")
            if target.status == "paused":
                self._wake(state, target)
            state.nodes.remove(target)
            state.leaving.append(target)
            writer = state.writer
            if writer is not None and writer.status == "running" and _procs.alive(writer.pid):
                self.engine.publish(state, writer, {})
        time.sleep(drain)
        with self._change() as state:
            target = next(n for n in state.leaving if n.id == target.id)
            self._kill(state, target)
            if target.partitioned:
                _firewall.heal(state.prefix, target.id, target.address, target.port)
            shutil.rmtree(node_dir(state, target), ignore_errors=True)
            state.leaving.remove(target)
            writer = state.writer
            if writer is not None and writer.status == "running" and _procs.alive(writer.pid):
                running = [n for n in state.readers if n.status == "running"]
                self.engine.set_sync(state, writer, bool(running))

    def add_replica(self, timeout: float = 60.0) -> NodeInfo:
        """Add a new reader that replicates from the writer."""
        with self._change() as state:
            writer = state.writer
            if writer is None or writer.status != "running":
                raise LabError("cannot add a replica: the writer is not running")
            node = _new_node(state, state.prefix, "reader")
            st.save(self.state_path, state)
            self._start_replica(state, node, writer, timeout)
            # In service once caught up, as on Aurora: before that the new node lacks what the
            # writer committed (on MariaDB even the application's user).
            self._wait_applied(state, node, self.engine.writer_position(state, writer), timeout)
            self.engine.set_sync(state, writer, True)
            self.engine.publish(state, writer, {node.id: Fresh(0.0, 0.0)})
            return _node_info(state, node)

    # -- global database (lab/_global.py) ------------------------------------------------
    def add_region(self, region: str, replicas: int = 1, timeout: float = 60.0) -> list[str]:
        """Grow a global database: a secondary cluster of ``replicas + 1`` read-only nodes in
        ``region``, replicating asynchronously from the writer; returns the new node ids."""
        from aurora_smartdriver.lab import _global

        return _global.add_region(self, region, replicas, timeout)

    def global_switchover(self, region: str, timeout: float = 60.0) -> Any:
        """Planned switchover of the global database's writer to ``region`` (no data loss)."""
        from aurora_smartdriver.lab import _global

        return _global.switchover(self, region, timeout)

    def global_failover(self, region: str, timeout: float = 60.0) -> Any:
        """Managed failover to ``region`` after losing the primary region (data loss allowed)."""
        from aurora_smartdriver.lab import _global

        return _global.failover(self, region, timeout)

    def hold_region(self, region: str) -> None:
        """Stop replication into a secondary region (it falls behind; see `global_failover`)."""
        from aurora_smartdriver.lab import _global

        _global.hold(self, region)

    def release_region(self, region: str) -> None:
        """Undo `hold_region`."""
        from aurora_smartdriver.lab import _global

        _global.release(self, region)

    def global_dsn(self, *, home_region: str | None = None) -> str:
        """URL through the global writer endpoint, with the global topology settings."""
        from aurora_smartdriver.lab import _global

        state = self.state()
        extra = (
            f"&topology_source=aurora-global"
            f"&global_instance_host_patterns={quote(_global.host_patterns(state), safe='')}"
        )
        if home_region is not None:
            extra += f"&home_region={home_region}"
        return _dsn(state, _global.global_endpoint(state)) + extra

    def proxy(self, node: str | NodeInfo) -> FaultProxy:
        """A started fault proxy before a node (latency, blackhole, reset) on its own address."""
        state = self.state()
        target = state.node(_id(node))
        existing = self._proxies.get(target.id)
        if existing is not None:
            return existing
        proxy = FaultProxy(
            f"{state.prefix}.{_net.PROXY_FIRST_HOST + target.index}",
            target.port,
            (target.address, target.port),
        )
        proxy.start()
        self._proxies[target.id] = proxy
        return proxy

    def blue_green_create(self, timeout: float = 60.0) -> dict[str, Any]:
        """Start a green environment replicating from this cluster (see docs/blue-green.md)."""
        from aurora_smartdriver.lab import _bluegreen

        return _bluegreen.create(self, timeout)

    def blue_green_switchover(
        self, *, in_progress_s: float = 1.0, dns_lag: float = 0.0, timeout: float = 30.0
    ) -> Any:
        """Switch the Blue/Green deployment over; returns a `SwitchoverReport`."""
        from aurora_smartdriver.lab import _bluegreen

        return _bluegreen.switchover(
            self, in_progress_s=in_progress_s, dns_lag=dns_lag, timeout=timeout
        )

    def blue_green_delete(self) -> bool:
        """Delete the Blue/Green deployment (green, or old blue, nodes); False if none."""
        from aurora_smartdriver.lab import _bluegreen

        return _bluegreen.delete(self)

    def pause_heartbeat(self) -> None:
        """Stop refreshing the metadata (every row goes stale, and stays as tests leave it)."""
        with self._change() as state:
            state.heartbeat_paused = True

    def resume_heartbeat(self) -> None:
        """Undo :meth:`pause_heartbeat`: the metadata is rewritten from the truth at once."""
        with self._change() as state:
            state.heartbeat_paused = False
            self._republish(state)

    def _republish(self, state: st.LabState) -> None:
        writer = state.writer
        if writer is not None and writer.status == "running" and _procs.alive(writer.pid):
            self.engine.publish(state, writer, {n.id: Fresh(0.0, 0.0) for n in state.nodes})

    def wait_replicated(self, timeout: float = 30.0) -> None:
        """Wait until every running replica has applied everything the writer has."""
        state = self.state()
        writer = state.writer
        if writer is None or writer.status != "running":
            return
        goal = self.engine.writer_position(state, writer)
        deadline = time.monotonic() + timeout
        for node in state.readers:
            if node.status == "running":
                self._wait_applied(state, node, goal, deadline - time.monotonic())

    def _wait_applied(
        self, state: st.LabState, node: st.NodeState, goal: int, timeout: float
    ) -> None:
        """Wait until ``node`` has applied the writer's log up to ``goal``."""
        deadline = time.monotonic() + timeout
        # A lagged replica applies late by design: what it received counts for it.
        measure = self.engine.position if node.lag else self.engine.applied_position
        while True:
            self.engine.drain(state, node, max(deadline - time.monotonic(), 0.1))
            if measure(state, node) >= goal:
                # A MariaDB position counts what arrived: let what arrived be applied too.
                self.engine.drain(state, node, max(deadline - time.monotonic(), 0.1))
                return
            if time.monotonic() > deadline:
                raise LabError(f"{node.id} did not catch up with the writer in {timeout:g}s")
            time.sleep(0.02)

    def restore(self, timeout: float = 60.0) -> bool:
        """Undo every fault: heal, resume, restart or rejoin nodes, refill replicas, settle DNS.

        Cheap when nothing is broken; returns whether anything had to be repaired. The writer
        may be a different node than at start (failovers are not undone).
        """
        from aurora_smartdriver.lab import _bluegreen, _global

        repaired = _global.restore(self, timeout)  # back to one region first
        repaired |= _bluegreen.delete(self)  # back to a plain cluster (green or -old1 nodes go)
        for proxy in self._proxies.values():
            proxy.stop()
        repaired |= bool(self._proxies)
        self._proxies.clear()
        state = self.state()
        for node in state.nodes:
            if node.partitioned:
                self.heal(node.id)
                repaired = True
            if node.status == "hung":
                self.resume(node.id)
                repaired = True
            if node.status == "paused":
                self._stop_pauser(node.id)  # it may resume on its own meanwhile: no error
                with self._change() as now:
                    paused = now.node(node.id)
                    if paused.status == "paused":
                        self._wake(now, paused)
                repaired = True
        with self._change() as state:
            for node in list(state.leaving):  # a removal that did not finish
                self._kill(state, node)
                shutil.rmtree(node_dir(state, node), ignore_errors=True)
                state.leaving.remove(node)
                repaired = True
        state = self.state()
        writer = state.writer
        if writer is not None and not _procs.alive(writer.pid):
            self.restart(writer.id, timeout)
            repaired = True
        for node in self.state().readers:
            if not _procs.alive(node.pid):
                self.rejoin(node.id, timeout)
                repaired = True
        while len(self.state().readers) < self.state().replicas_wanted:
            self.add_replica(timeout)
            repaired = True
        for node in self.state().readers:
            if node.lag:
                self.lag(node.id, 0)
                repaired = True
        closing: list[tuple[str, int]] = []
        with self._change() as state:
            if state.proxy_endpoints:
                closing = [(e.address, state.port) for e in state.proxy_endpoints]
                state.proxy_endpoints.clear()
                repaired = True
            if state.custom_endpoints or state.rds_api_down:
                state.custom_endpoints.clear()
                state.rds_api_down = False
                repaired = True
            if state.heartbeat_paused:
                state.heartbeat_paused = False
                self._republish(state)  # a test may have planted garbage meanwhile
                repaired = True
            writer = state.writer
            if writer is not None and (
                state.dns.cluster_target != writer.id or state.dns.pending_target is not None
            ):
                state.dns.cluster_target = writer.id
                state.dns.pending_target = state.dns.pending_at = None
                repaired = True
        for address, port in closing:  # gone before the next test adds endpoints again
            _await_listener(address, port, listening=False)
        if repaired:
            self.wait_replicated(timeout)
        return repaired

    # -- custom endpoints and the RDS API stand-in (docs/custom-endpoints.md) ---------------
    @property
    def rds_api_url(self) -> str:
        """URL of the lab's RDS API stand-in (give it as `rds_endpoint_url` or boto3's
        `endpoint_url`; any credentials sign)."""
        state = self.state()
        port_file = Path(state.dir) / _rds_api.PORT_FILE
        try:
            port = int(port_file.read_text())
        except (FileNotFoundError, ValueError):
            raise LabError(
                f"the lab's supervisor serves no RDS API ({port_file} is missing): "
                "restart the lab with this version"
            ) from None
        return f"http://{state.dns.address}:{port}"

    def custom_endpoint_dsn(self, name: str) -> str:
        """URL through the custom endpoint `name`, reading its members from the lab's RDS API."""
        state = self.state()
        _custom.find(state, name)
        url = quote(self.rds_api_url, safe="")
        return _dsn(state, state.custom_endpoint(name)) + f"&rds_endpoint_url={url}"

    def add_custom_endpoint(
        self,
        name: str,
        members: list[str] | None = None,
        kind: str = "reader",
        *,
        excluded: list[str] | None = None,
    ) -> str:
        """Create the custom endpoint `name` of `kind` ("reader" or "any") with the static
        `members`, or, without them, every instance but `excluded`; returns its host name.
        Served by the lab's DNS and RDS API at once; `restore` removes it."""
        static, left_out = [_id(m) for m in members or []], [_id(m) for m in excluded or []]
        with self._change() as state:
            _custom.check(state, name, kind, static, left_out)
            if any(e.name == name for e in state.custom_endpoints):
                raise LabError(f"custom endpoint {name!r} exists already")
            state.custom_endpoints.append(st.CustomEndpointState(name, kind, static, left_out))
            return state.custom_endpoint(name)

    def modify_custom_endpoint(
        self,
        name: str,
        members: list[str] | None = None,
        kind: str | None = None,
        *,
        excluded: list[str] | None = None,
    ) -> None:
        """Change a custom endpoint: new static `members`, or `excluded` members (the other
        list is emptied, as RDS does), and/or a new `kind`."""
        with self._change() as state:
            endpoint = _custom.find(state, name)
            static, left_out = endpoint.static, endpoint.excluded
            if members is not None:
                static, left_out = [_id(m) for m in members], []
            if excluded is not None:
                static, left_out = [], [_id(m) for m in excluded]
            new_kind = endpoint.kind if kind is None else kind
            _custom.check(state, name, new_kind, static, left_out)
            endpoint.kind, endpoint.static, endpoint.excluded = new_kind, static, left_out

    def remove_custom_endpoint(self, name: str) -> None:
        """Delete a custom endpoint: its name stops resolving, the RDS API forgets it."""
        with self._change() as state:
            state.custom_endpoints.remove(_custom.find(state, name))

    def custom_endpoint_members(self, name: str) -> list[str]:
        """The instances a connection through `name` may reach now (up or not), by id."""
        state = self.state()
        return [n.id for n in _custom.members(state, _custom.find(state, name))]

    # -- RDS Proxy (lab/_rds_proxy.py, docs/rds-proxy.md) -------------------------------------
    def add_rds_proxy_endpoint(
        self, name: str = "default", role: str = "read_write", *, borrow_timeout: float = 30.0
    ) -> str:
        """Open an endpoint of the lab's RDS Proxy imitation and return its host name, once
        it accepts connections: "default" is the proxy's own (read/write) endpoint, any other
        name an additional endpoint of `role` ("read_write" or "read_only"). New connections
        wait up to `borrow_timeout` s for a node of that role; `restore` removes it."""
        if role not in _rds_proxy.ROLES:
            raise LabError(f"proxy endpoint role must be one of {', '.join(_rds_proxy.ROLES)}")
        if name == "default" and role != "read_write":
            raise LabError("a proxy's default endpoint is read_write; name another endpoint")
        if name != "default" and not re.fullmatch(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*", name):
            raise LabError(f"proxy endpoint name {name!r}: use lowercase letters, digits, '-'")
        if borrow_timeout <= 0:
            raise LabError(f"borrow_timeout must be > 0 seconds, not {borrow_timeout}")
        with self._change() as state:
            if any(e.name == name for e in state.proxy_endpoints):
                raise LabError(f"proxy endpoint {name!r} exists already")
            taken = {e.address for e in state.proxy_endpoints}
            turn = next(
                t
                for t in range(state.proxy_addresses_given, state.proxy_addresses_given + 50)
                if _proxy_address(state, t) not in taken
            )
            state.proxy_addresses_given = turn + 1
            address = _proxy_address(state, turn)
            state.proxy_endpoints.append(st.ProxyEndpointState(name, role, address, borrow_timeout))
            host, port = state.proxy_endpoint(name), state.port
        _await_listener(address, port, listening=True)  # the supervisor opens it in a moment
        return host

    def rds_proxy_dsn(self, name: str = "default", *, read_only_endpoint: str | None = None) -> str:
        """URL through the proxy endpoint `name` (added first if needed, read_write), with
        `rds_proxy=read_only` for a read-only one, and `read_only_endpoint` (an endpoint name
        added as read_only if needed) for reader connections."""
        for wanted, role in ((name, "read_write"), (read_only_endpoint, "read_only")):
            if wanted is not None and not any(
                e.name == wanted for e in self.state().proxy_endpoints
            ):
                self.add_rds_proxy_endpoint(wanted, role)
        state = self.state()
        endpoint = next(e for e in state.proxy_endpoints if e.name == name)
        dsn = _dsn(state, state.proxy_endpoint(name), pattern=False)
        if endpoint.role == "read_only":
            dsn += "&rds_proxy=read_only"
        if read_only_endpoint is not None:
            dsn += f"&rds_proxy_read_only_endpoint={state.proxy_endpoint(read_only_endpoint)}"
        return dsn

    def remove_rds_proxy_endpoint(self, name: str) -> None:
        """Delete a proxy endpoint: its name stops resolving, its connections are cut."""
        with self._change() as state:
            found = [e for e in state.proxy_endpoints if e.name == name]
            if not found:
                raise LabError(f"no proxy endpoint {name!r} in lab {state.name!r}")
            state.proxy_endpoints.remove(found[0])
            port = state.port
        # Closed before this returns: an endpoint added next must not meet the old listener,
        # which the supervisor would close under it.
        _await_listener(found[0].address, port, listening=False)

    def rds_api_outage(self, down: bool = True) -> None:
        """Make the RDS API stand-in drop every request (`down`), or answer again."""
        with self._change() as state:
            state.rds_api_down = down

    # -- tear-down -----------------------------------------------------------------------
    def down(self) -> None:
        """Stop every process, remove firewall rules and delete the lab's directory."""
        for lagger in self._laggers.values():
            with contextlib.suppress(Exception):
                lagger.stop()
        self._laggers.clear()
        for pauser in self._pausers.values():
            pauser.stop()
        self._pausers.clear()
        for proxy in self._proxies.values():
            proxy.stop()
        self._proxies.clear()
        _started.discard(self)
        teardown(self.state_path)
        if self._claim is not None:
            self._claim.lock.close()
            self._claim = None

    @property
    def aio(self) -> AsyncLab:
        """The operations above as coroutines run in a thread, for async tests: ``await
        lab.aio.failover()`` leaves the event loop serving the clients under test."""
        from aurora_smartdriver.lab._aio import AsyncLab

        return AsyncLab(self)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def __repr__(self) -> str:
        return f"<aurora_smartdriver.lab.Lab state={str(self.state_path)!r}>"


def _proxy_address(state: st.LabState, turn: int) -> str:
    """The `turn`-th proxy endpoint address, in turn over the 50 set aside for them."""
    return f"{state.prefix}.{_net.RDS_PROXY_FIRST_HOST + turn % 50}"


def _await_listener(address: str, port: int, *, listening: bool, timeout: float = 15.0) -> None:
    """Wait until the supervisor listens on `address:port` (or has stopped listening there):
    it follows the state file a moment after a change."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((address, port), timeout=1).close()
            up = True
        except OSError:
            up = False
        if up == listening:
            return
        if time.monotonic() > deadline:
            state = "open" if listening else "close"
            raise LabError(f"the lab's RDS Proxy did not {state} {address}:{port} in {timeout}s")
        time.sleep(0.05)


def _id(node: str | NodeInfo) -> str:
    return node if isinstance(node, str) else node.id


def _running(state: st.LabState, node_id: str) -> st.NodeState:
    node = state.node(node_id)
    if node.status != "running" or not _procs.alive(node.pid):
        raise LabError(f"{node.id} is {node.status}, not running")
    return node


def _until_closed(address: str, port: int, timeout: float = 5.0) -> None:
    """Wait until no connection to ``address:port`` is open at the server's side (sessions
    just ended are closing), so that a knock on a paused node is a new connection."""
    from aurora_smartdriver.lab._pause import knocking

    deadline = time.monotonic() + timeout
    while knocking(address, port) and time.monotonic() < deadline:
        time.sleep(0.01)


def _new_node(state: st.LabState, prefix: str, role: str) -> st.NodeState:
    index = state.next_index
    state.next_index += 1
    node = st.NodeState(
        id=f"{state.name}-instance-{index}",
        index=index,
        address=f"{prefix}.{_net.FIRST_NODE_HOST + index - 1}",
        port=state.port,
        role=role,
        status="stopped",
        datadir="",
        server_id=index,
        session_id=str(uuid.uuid4()),
    )
    node.datadir = str(Path(state.dir) / node.id)
    state.nodes.append(node)
    return node


def _settle_dns(dns: st.DNSState, now: float) -> None:
    """Apply a delayed flip that has come due, so a new failover starts from what DNS says."""
    if dns.pending_target is not None and dns.pending_at is not None and now >= dns.pending_at:
        dns.cluster_target = dns.pending_target
        dns.pending_target = dns.pending_at = None


def dns_target(dns: st.DNSState, now: float) -> str:
    """The instance the cluster endpoint points at, at time ``now``."""
    if dns.pending_target is not None and dns.pending_at is not None and now >= dns.pending_at:
        return dns.pending_target
    return dns.cluster_target


def teardown(state_path: Path, *, keep_supervisor: int | None = None) -> None:
    """Tear a lab down from its state file alone: processes, firewall rules, directory.

    Works from any process and after any failure; each step is attempted even when an earlier
    one failed, and a missing lab is not an error.
    """
    try:
        state = st.load(state_path)
    except FileNotFoundError:
        return
    except ValueError:
        state = None
    if state is not None:
        if state.supervisor_pid and state.supervisor_pid != keep_supervisor:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(state.supervisor_pid, signal.SIGTERM)
            if not _procs.wait_gone(state.supervisor_pid, 5):
                with contextlib.suppress(Exception):
                    _procs.kill_tree(state.supervisor_pid)
        engine: Engine | None = None
        with contextlib.suppress(LabError):
            engine = engine_for(state.engine)
        from aurora_smartdriver.lab._bluegreen import extra_nodes

        for node in [*state.nodes, *state.leaving, *extra_nodes(state)]:  # green / old blue too
            if node.pid is not None:
                with contextlib.suppress(Exception):
                    _procs.kill_tree(node.pid)
            if engine is not None:
                with contextlib.suppress(Exception):
                    engine.after_kill(state, node)
        with contextlib.suppress(Unsupported):
            _firewall.remove_all(state.prefix)
    # Another process may be opening the lock file as the tree goes: try again briefly.
    for _ in range(20):
        shutil.rmtree(state_path.parent, ignore_errors=True)
        if not state_path.parent.exists():
            break
        time.sleep(0.05)


_SOCKET_PATH_MAX = 107  # bytes in sockaddr_un.sun_path, less the terminating NUL


def _check_socket_room(tmpdir: str, longest_node: str) -> None:
    """Refuse a temporary directory too deep for the nodes' Unix sockets, before starting.

    The servers' local sockets live in each node's directory (PostgreSQL's
    ``run/.s.PGSQL.<port>`` is the longest), and a socket path has a hard limit.
    """
    longest = os.path.join(tmpdir, f"{LAB_DIR_PREFIX}xxxxxxxx", longest_node, "run/.s.PGSQL.65535")
    if len(longest.encode()) > _SOCKET_PATH_MAX:
        raise LabError(
            f"the temporary directory {tmpdir!r} is too deep for the lab's Unix sockets "
            f"({len(longest.encode())} > {_SOCKET_PATH_MAX} bytes); set TMPDIR to a shorter one"
        )


def lab_dirs() -> list[Path]:
    """Directories of labs on this machine (in the temporary directory)."""
    return sorted(Path(tempfile.gettempdir()).glob(f"{LAB_DIR_PREFIX}*"))


def residue() -> list[str]:
    """What labs left behind: directories, processes, firewall rules. Empty when clean.

    Directories and processes are looked for under the temporary directory (``$TMPDIR``), so a
    test run with a ``TMPDIR`` of its own sees only its own labs; firewall rules of any lab count.
    """
    found = [f"directory {d}" for d in lab_dirs()]
    marker = str(Path(tempfile.gettempdir()) / LAB_DIR_PREFIX)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = Path(entry.path, "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline and _procs.alive(int(entry.name)):
            found.append(f"process {entry.name}: {cmdline.strip()[:200]}")
    # A rule of a lab that is still running (its subnet still claimed) is not residue.
    found += [
        f"iptables rule {rule}"
        for rule in _firewall.leftover_rules()
        if not _net.claimed(_firewall.rule_prefix(rule))
    ]
    return found
