"""The ``aurora-smartdriver`` command: the lab, the demo, and (later) topology tools."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aurora_smartdriver import __version__


def _print_nodes(nodes: Sequence[dict[str, Any]]) -> None:
    """The nodes as a table whose columns are as wide as their widest value, two blanks apart."""
    rows = [
        [
            str(node["id"]),
            str(node["role"]),
            str(node["status"]),
            f"{node['address']}:{node['port']}",
            str(node["host"])
            + (" (partitioned)" if node.get("partitioned") else "")
            + (f" (lagging {node['lag']:g}s)" if node.get("lag") else ""),
        ]
        for node in nodes
    ]
    header = ["id", "role", "status", "address", "host"]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
    for row in [header, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  " + "  ".join([*cells, row[-1]]))


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str | None = None) -> None:
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        if text:
            print(text)
        if "nodes" in doc:
            _print_nodes(doc["nodes"])


def _lab_command(args: argparse.Namespace) -> int:
    from aurora_smartdriver import lab
    from aurora_smartdriver.lab import LabError, _global

    if args.lab_cmd == "up":
        started = time.monotonic()
        cluster = lab.start(
            args.engine,
            replicas=args.replicas,
            name=args.name,
            dns_ttl=args.dns_ttl,
            dns_lag=args.dns_lag,
            port=args.port,
            owned=False,
            tls=args.tls,
        )
        doc = cluster.info()
        doc["startup_s"] = round(time.monotonic() - started, 3)
        _emit(
            args,
            doc,
            f"lab {doc['name']} ({doc['engine']}) up in {doc['startup_s']:.2f}s\n"
            f"  dsn:   {doc['dsn']}\n  dns:   {doc['dns']['address']}:{doc['dns']['port']}\n"
            f"  state: {doc['state']}\n"
            f"  tear down with: aurora-smartdriver lab down --state {doc['state']}",
        )
        return 0
    if args.lab_cmd == "down":
        from aurora_smartdriver.lab._cluster import lab_dirs, teardown
        from aurora_smartdriver.lab._state import state_path

        paths = [state_path(d) for d in lab_dirs()] if args.all else [Path(args.state)]
        for path in paths:
            teardown(path)
        return 0
    if args.lab_cmd == "residue":
        found = lab.residue()
        for line in found:
            print(f"lab residue: {line}", file=sys.stderr)
        return 1 if found else 0

    cluster = lab.attach(args.state)
    if args.lab_cmd == "status":
        _emit(args, cluster.info())
    elif args.lab_cmd == "failover":
        report = cluster.failover(args.to, how=args.how, dns_lag=args.dns_lag)
        doc = {**report.to_json(), "nodes": [n.to_json() for n in cluster.nodes]}
        _emit(
            args,
            doc,
            f"failover {report.old_writer} -> {report.new_writer} ({report.how}) "
            f"in {report.duration_s:.2f}s",
        )
    elif args.lab_cmd == "add-replica":
        node = cluster.add_replica()
        _emit(args, {"node": node.to_json(), "nodes": [n.to_json() for n in cluster.nodes]})
    elif args.lab_cmd == "lag":
        if cluster.state().engine != "postgresql" and args.seconds != int(args.seconds):
            # MariaDB's finer lag is a thread of the process that asks (Lab.lag): it would end
            # with this command. MASTER_DELAY, which outlives it, counts whole seconds.
            raise LabError(
                "MariaDB lags a replica in whole seconds from the command line; use Lab.lag() "
                "in the lab's own process for less"
            )
        cluster.lag(args.node, args.seconds, in_process=False)
        _emit(args, {"nodes": [n.to_json() for n in cluster.nodes]})
    elif args.lab_cmd == "custom-endpoint":
        _emit(args, _custom_endpoint_command(cluster, args))
    elif args.lab_cmd == "rds-proxy":
        _emit(args, _rds_proxy_command(cluster, args))
    elif args.lab_cmd == "rds-api":
        cluster.rds_api_outage(args.switch == "down")
        _emit(args, {"rds_api": cluster.rds_api_url, "down": args.switch == "down"})
    elif args.lab_cmd == "blue-green-create":
        doc = cluster.blue_green_create()
        _emit(args, {**doc, "nodes": [n.to_json() for n in cluster.nodes]})
    elif args.lab_cmd == "blue-green-switchover":
        bg = cluster.blue_green_switchover(in_progress_s=args.in_progress, dns_lag=args.dns_lag)
        _emit(args, bg.to_json(), f"switchover {bg.deployment} in {bg.duration_s:.2f}s")
    elif args.lab_cmd == "blue-green-delete":
        _emit(args, {"deleted": cluster.blue_green_delete()})
    elif args.lab_cmd in _global.GLOBAL_COMMANDS:  # a global database
        _emit(args, *_global.global_command(cluster, args))
    elif args.lab_cmd == "restore":
        repaired = cluster.restore()
        _emit(args, {"repaired": repaired, "nodes": [n.to_json() for n in cluster.nodes]})
    else:
        getattr(cluster, args.lab_cmd)(args.node)
        _emit(args, {"nodes": [n.to_json() for n in cluster.nodes]})
    return 0


def _custom_endpoint_command(cluster: Any, args: argparse.Namespace) -> dict[str, Any]:
    """`lab custom-endpoint add|modify|remove|list`: change, then list the custom endpoints."""
    from aurora_smartdriver.lab import LabError

    def split(text: str | None) -> list[str] | None:
        return None if text is None else [n.strip() for n in text.split(",") if n.strip()]

    if args.action != "list" and not args.name:
        raise LabError(f"lab custom-endpoint {args.action} needs the endpoint's name")
    if args.action == "add":
        cluster.add_custom_endpoint(
            args.name, split(args.members), args.kind or "reader", excluded=split(args.excluded)
        )
    elif args.action == "modify":
        cluster.modify_custom_endpoint(
            args.name, split(args.members), args.kind, excluded=split(args.excluded)
        )
    elif args.action == "remove":
        cluster.remove_custom_endpoint(args.name)
    state = cluster.state()
    return {
        "rds_api": cluster.rds_api_url,
        "custom_endpoints": [
            {
                "name": e.name,
                "host": state.custom_endpoint(e.name),
                "kind": e.kind,
                "static": e.static,
                "excluded": e.excluded,
                "members_now": cluster.custom_endpoint_members(e.name),
                "dsn": cluster.custom_endpoint_dsn(e.name),
            }
            for e in state.custom_endpoints
        ],
    }


def _rds_proxy_command(cluster: Any, args: argparse.Namespace) -> dict[str, Any]:
    """`lab rds-proxy add|remove|list`: change, then list the RDS Proxy endpoints."""
    if args.action == "add":
        cluster.add_rds_proxy_endpoint(args.name, args.role, borrow_timeout=args.borrow_timeout)
    elif args.action == "remove":
        cluster.remove_rds_proxy_endpoint(args.name)
    state = cluster.state()
    return {
        "proxy_endpoints": [
            {
                "name": e.name,
                "host": state.proxy_endpoint(e.name),
                "role": e.role,
                "address": e.address,
                "borrow_timeout": e.borrow_timeout,
                "dsn": cluster.rds_proxy_dsn(e.name),
            }
            for e in state.proxy_endpoints
        ],
    }


def _topology_doc(topo: Any, source: str | None) -> dict[str, Any]:
    def host(h: Any) -> dict[str, Any]:
        return {
            "id": h.instance_id,
            "host": h.host,
            "port": h.port,
            "role": h.role.value,
            "lag_ms": h.lag_ms,
            "cpu": h.cpu,
            "last_update": h.last_update,
        }

    return {
        "writer": host(topo.writer) if topo.writer else None,
        "readers": [host(r) for r in topo.readers],
        "source": topo.source or source,
        "version": topo.version,
        "taken_at": topo.taken_at,
    }


def _print_topology(doc: dict[str, Any]) -> None:
    print(f"topology v{doc['version']} from {doc['source']}")
    print(f"  {'role':<7} {'instance':<24} {'lag_ms':>8}  endpoint")
    rows = ([doc["writer"]] if doc["writer"] else []) + doc["readers"]
    for row in rows:
        lag = "" if row["lag_ms"] is None else f"{row['lag_ms']:.0f}"
        print(f"  {row['role']:<7} {row['id']:<24} {lag:>8}  {row['host']}:{row['port']}")


def _monitor_for(args: argparse.Namespace) -> Any:
    from aurora_smartdriver import dsn
    from aurora_smartdriver.monitor import ClusterMonitor

    overrides = {"topology_source": args.source} if args.source else {}
    return ClusterMonitor(dsn.parse(args.dsn, **overrides))


def _first_topology(monitor: Any) -> Any:
    """The monitor's first topology, or None after saying on stderr why there is none."""
    topo = monitor.refresh_now()
    if topo is None:
        print(
            f"aurora-smartdriver: error: no topology: {monitor.stats().last_error}",
            file=sys.stderr,
        )
    return topo


def _topology_command(args: argparse.Namespace) -> int:
    monitor = _monitor_for(args)
    try:
        topo = _first_topology(monitor)
        if topo is None:
            return 1
        doc = _topology_doc(topo, monitor.source)
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            _print_topology(doc)
        return 0
    finally:
        monitor.close()


def _stamp() -> str:
    now = time.time()
    return time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now * 1000) % 1000:03d}"


def _probe(cluster: Any, role: str) -> str:
    """One ``SELECT 1`` on a pooled connection of ``role``: where it ran, or what went wrong."""
    from aurora_smartdriver.pool._errors import describe_error

    try:
        with cluster.connection(role) as conn:
            cur = conn.cursor()
            cur.execute("SELECT 1")
            cur.fetchall()
            return f"{role} ok on {conn.instance_id}"
    except Exception as exc:
        return f"{role} failed: {describe_error(exc)}"


def _watch_command(args: argparse.Namespace) -> int:
    """Topology changes as they happen and, every ``--interval``, the library's counters.

    On a terminal the counters are redrawn in place; otherwise (a pipe, a file) every line is
    appended, so the output is a log. A topology line is printed only when something it shows
    changed (the writer, the readers, their endpoints), not for every new lag or CPU figure.
    ``--probe`` runs a ``SELECT 1`` on the writer and on a reader each interval through pooled
    connections, so routing, pool and failover counters move as an application's would.
    """
    import threading

    from aurora_smartdriver.cluster import Cluster

    overrides = {"topology_source": args.source} if args.source else {}
    cluster = Cluster(args.dsn, **overrides)
    monitor = cluster._runtime.monitor
    tty = sys.stdout.isatty() and not args.json
    lock = threading.Lock()
    shown: list[Any] = [0, None]  # the last version seen, what the last line showed
    changes: list[str] = []

    def show(change: Any, topo: Any) -> None:
        with lock:
            if topo.version <= shown[0]:
                return  # an older snapshot, arriving late
            shown[0] = topo.version
            visible = _visible(topo)
            if visible == shown[1]:
                return
            shown[1] = visible
            doc = _topology_doc(topo, monitor.source)
            if args.json:
                print(json.dumps({"at": time.time(), **doc}), flush=True)
                return
            writer = doc["writer"]["id"] if doc["writer"] else None
            readers = ", ".join(r["id"] for r in doc["readers"])
            moved = (
                f"  writer changed {change.writer_changed}"
                if change is not None and change.writer_changed
                else ""
            )
            line = f"{_stamp()} v{doc['version']} writer {writer}; readers {readers}{moved}"
            changes.append(line)
            del changes[:-10]
            if not tty:
                print(line, flush=True)

    monitor.add_listener(show)
    try:
        first = _first_topology(monitor)
        if first is None:
            return 1
        show(None, first)
        rounds = 0
        while args.count is None or rounds < args.count:
            time.sleep(args.interval)
            probes = [_probe(cluster, role) for role in ("writer", "reader")] if args.probe else []
            snap = cluster.metrics()
            rounds += 1
            with lock:
                if args.json:
                    doc = {"at": time.time(), "metrics": snap.to_json(), "probes": probes}
                    print(json.dumps(doc), flush=True)
                elif tty:
                    screen = [*changes, "", f"{_stamp()} counters", snap.format(), *probes]
                    print("\x1b[H\x1b[J" + "\n".join(screen), flush=True)
                else:
                    print(f"{_stamp()} counters", flush=True)
                    print(snap.format(), flush=True)
                    for line in probes:
                        print(f"  probe {line}", flush=True)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        monitor.remove_listener(show)
        cluster.close()


def _visible(topo: Any) -> tuple[Any, ...]:
    """What a topology line shows: the writer and the readers, with their endpoints."""
    writer = topo.writer
    return (
        None if writer is None else (writer.instance_id, writer.host, writer.port),
        tuple((r.instance_id, r.host, r.port) for r in topo.readers),
    )


def _seconds(text: str) -> float:
    """``--interval``: a finite number of seconds above zero (0 would busy-loop)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a number of seconds above 0 (e.g. 2 or 0.5), got {text!r}"
        )
    return value


def _count(text: str) -> int:
    """``--count``: a whole number of reports, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _demo_command(args: argparse.Namespace) -> int:
    from aurora_smartdriver._demo import run_demo

    return run_demo(
        engine=args.engine,
        replicas=args.replicas,
        dns_lag=args.dns_lag,
        png=args.png,
        plot=not args.no_png,
        interval=args.interval,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aurora-smartdriver",
        description="A failover-aware connection layer for replicated database clusters.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="start a lab cluster, fail it over, show what happened")
    demo.add_argument("--engine", choices=["postgresql", "mariadb"], default="postgresql")
    demo.add_argument("--replicas", type=int, default=2)
    demo.add_argument("--dns-lag", type=float, default=5.0, help="seconds DNS lags the failover")
    demo.add_argument(
        "--png",
        default=None,
        metavar="PATH",
        help="where to save the timeline plot (default: the temporary directory)",
    )
    demo.add_argument("--no-png", action="store_true", help="skip the timeline plot")
    demo.add_argument("--interval", type=float, default=0.5, help="seconds between progress lines")
    demo.set_defaults(func=_demo_command)

    for name, text, func in [
        ("topology", "print a cluster's topology", _topology_command),
        ("watch", "print topology changes and the library's counters", _watch_command),
    ]:
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("dsn", help="the cluster's DSN (library parameters allowed)")
        cmd.add_argument("--source", default=None, help="topology source (default: the DSN's)")
        cmd.add_argument("--json", action="store_true", help="print JSON")
        cmd.set_defaults(func=func)
        if name == "watch":
            cmd.add_argument(
                "--interval",
                type=_seconds,
                default=2.0,
                help="seconds between counter reports (above 0)",
            )
            cmd.add_argument(
                "--count", type=_count, default=None, help="stop after this many reports"
            )
            cmd.add_argument(
                "--probe", action="store_true", help="SELECT 1 on the writer and a reader each time"
            )

    lab = sub.add_parser("lab", help="a local Aurora-like cluster for tests and demos")
    lab_sub = lab.add_subparsers(dest="lab_cmd", required=True)

    def with_state(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--state", required=True, help="the lab's state file (from lab up)")
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    up = lab_sub.add_parser(
        "up",
        help="start a cluster and leave it running",
    )
    up.add_argument(
        "--engine",
        choices=["postgresql", "mariadb"],
        default="postgresql",
        help="database engine (default: %(default)s)",
    )
    up.add_argument(
        "--replicas",
        type=int,
        default=2,
        metavar="N",
        help="readers besides the writer (default: %(default)s)",
    )
    up.add_argument(
        "--name",
        default="lab",
        help="the lab's name, in its host names and directory (default: %(default)s)",
    )
    up.add_argument(
        "--dns-ttl",
        type=int,
        default=5,
        metavar="SECONDS",
        help="seconds the lab's DNS answers may be cached (default: %(default)s)",
    )
    up.add_argument(
        "--dns-lag",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds after a failover before the cluster endpoint names the new writer "
        "(default: %(default)s)",
    )
    up.add_argument(
        "--port",
        type=int,
        default=None,
        help="the port every node listens on, each at its own loopback address "
        "(default: the engine's, 5432 or 3306)",
    )
    up.add_argument("--tls", action="store_true", help="serve TLS; the DSN verifies it")
    up.add_argument("--json", action="store_true", help="print JSON")

    with_state(lab_sub.add_parser("status", help="the nodes as they are now"))
    fo = with_state(lab_sub.add_parser("failover", help="replace the writer"))
    fo.add_argument(
        "--to",
        default=None,
        metavar="NODE",
        help="the replica to promote (default: the most advanced one)",
    )
    fo.add_argument(
        "--how",
        choices=["crash", "stop"],
        default="crash",
        help="crash: kill -9 the writer; stop: shut it down cleanly (default: %(default)s)",
    )
    fo.add_argument(
        "--dns-lag",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds before the cluster endpoint names the new writer "
        "(default: the lab's, from lab up --dns-lag)",
    )
    for fault, text in [
        ("crash", "kill -9 a node"),
        ("hang", "SIGSTOP a node (connects complete, nothing answers)"),
        ("resume", "undo hang"),
        ("partition", "drop a node's packets (root, iptables)"),
        ("heal", "undo partition"),
        ("restart", "start a crashed node again in its role"),
        ("rejoin", "bring a node back as a replica of the current writer"),
        ("remove", "delete a replica"),
    ]:
        with_state(lab_sub.add_parser(fault, help=text)).add_argument("node")
    lag = with_state(
        lab_sub.add_parser("lag", help="make a replica apply the writer's commits late")
    )
    lag.add_argument("node")
    lag.add_argument(
        "seconds",
        type=float,
        help="how late (0 undoes it; PostgreSQL: millisecond steps, MariaDB: whole seconds)",
    )
    with_state(lab_sub.add_parser("add-replica", help="add a reader"))
    custom = with_state(
        lab_sub.add_parser(
            "custom-endpoint", help="add, modify, remove or list Aurora custom endpoints"
        )
    )
    custom.add_argument("action", choices=["add", "modify", "remove", "list"])
    custom.add_argument("name", nargs="?", help="the custom endpoint's name")
    custom.add_argument("--kind", choices=["reader", "any"], help="(add: default reader)")
    custom.add_argument("--members", metavar="NODE,...", help="static members")
    custom.add_argument(
        "--excluded", metavar="NODE,...", help="every instance but these, later ones included"
    )
    proxy = with_state(
        lab_sub.add_parser("rds-proxy", help="add, remove or list RDS Proxy endpoints")
    )
    proxy.add_argument("action", choices=["add", "remove", "list"])
    proxy.add_argument(
        "name", nargs="?", default="default", help="the endpoint's name (default: the proxy's)"
    )
    proxy.add_argument(
        "--role", choices=["read_write", "read_only"], default="read_write", help="(add)"
    )
    proxy.add_argument(
        "--borrow-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long new connections wait for a node of the role (add; default %(default)s)",
    )
    rds_api = with_state(
        lab_sub.add_parser("rds-api", help="make the lab's RDS API stand-in unreachable, or not")
    )
    rds_api.add_argument("switch", choices=["down", "up"])
    from aurora_smartdriver.lab._global import add_global_parsers

    add_global_parsers(lab_sub, with_state)
    with_state(lab_sub.add_parser("restore", help="undo every fault"))
    with_state(lab_sub.add_parser("blue-green-create", help="start a green environment"))
    bgs = with_state(
        lab_sub.add_parser("blue-green-switchover", help="switch the Blue/Green deployment over")
    )
    bgs.add_argument(
        "--in-progress",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="least time the switchover stays SWITCHOVER_IN_PROGRESS (default: %(default)s)",
    )
    bgs.add_argument(
        "--dns-lag",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="seconds the blue names still lead to the old blue nodes (default: %(default)s)",
    )
    with_state(lab_sub.add_parser("blue-green-delete", help="delete the Blue/Green deployment"))
    down = lab_sub.add_parser("down", help="stop a lab and delete its files")
    group = down.add_mutually_exclusive_group(required=True)
    group.add_argument("--state")
    group.add_argument("--all", action="store_true", help="every lab on this machine")
    lab_sub.add_parser("residue", help="list what labs left behind; exit 1 if anything")
    lab.set_defaults(func=_lab_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "lab" and not hasattr(args, "json"):
        args.json = False
    try:
        result: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from aurora_smartdriver.errors import AuroraSmartDriverError
        from aurora_smartdriver.lab import LabError

        if isinstance(
            exc, LabError | AuroraSmartDriverError | FileNotFoundError | KeyError | ValueError
        ):
            print(f"aurora-smartdriver: error: {exc}", file=sys.stderr)
            return 1
        raise
    return result
