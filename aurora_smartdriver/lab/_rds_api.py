"""The lab's stand-in for the RDS API: the Query API calls the library makes, from lab state.

An HTTP server on the lab's DNS address (loopback, a free port) that answers, as RDS does and in
its XML, `DescribeDBClusterEndpoints` (the cluster's writer and reader endpoints and its custom
endpoints), `DescribeDBClusters` (members and which one writes) and `DescribeDBInstances`
(instance endpoints). Point boto3 at it with `endpoint_url` (the library: `rds_endpoint_url`).
Requests are not authenticated (any credentials do; boto3 still needs some to sign with).
Other actions get RDS's `InvalidAction` error. With `rds_api_down` in the lab state every
request is dropped without an answer, as an unreachable API.

Run by the lab's supervisor; it writes the port to `rds-api.port` beside the state file.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from aurora_smartdriver.lab import _state as st

__all__ = ["PORT_FILE", "RdsApiServer", "respond"]

PORT_FILE = "rds-api.port"
_NS = "http://rds.amazonaws.com/doc/2014-10-31/"


def _el(tag: str, value: object) -> str:
    if isinstance(value, bool):
        value = "true" if value else "false"
    return f"<{tag}>{escape(str(value))}</{tag}>"


def _members(tag: str, ids: list[str]) -> str:
    return f"<{tag}>" + "".join(_el("member", i) for i in ids) + f"</{tag}>"


def _arn(state: st.LabState, kind: str, name: str) -> str:
    return f"arn:aws:rds:{st.REGION}:000000000000:{kind}:{name}"


def _endpoints(state: st.LabState) -> list[str]:
    """Every endpoint of the cluster as `DBClusterEndpointList` elements, custom ones last."""
    rows = []
    for kind, host in (("WRITER", state.cluster_endpoint), ("READER", state.reader_endpoint)):
        rows.append(
            "<DBClusterEndpointList>"
            + _el("DBClusterIdentifier", state.name)
            + _el("Endpoint", host)
            + _el("Status", "available")
            + _el("EndpointType", kind)
            + "</DBClusterEndpointList>"
        )
    for endpoint in state.custom_endpoints:
        rows.append(
            "<DBClusterEndpointList>"
            + _el("DBClusterEndpointIdentifier", endpoint.name)
            + _el("DBClusterIdentifier", state.name)
            + _el("DBClusterEndpointResourceIdentifier", f"cluster-endpoint-{endpoint.name}")
            + _el("Endpoint", state.custom_endpoint(endpoint.name))
            + _el("Status", "available")
            + _el("EndpointType", "CUSTOM")
            + _el("CustomEndpointType", endpoint.kind.upper())
            + _members("StaticMembers", endpoint.static)
            + _members("ExcludedMembers", endpoint.excluded)
            + _el("DBClusterEndpointArn", _arn(state, "cluster-endpoint", endpoint.name))
            + "</DBClusterEndpointList>"
        )
    return rows


def _cluster(state: st.LabState) -> str:
    members = "".join(
        "<DBClusterMember>"
        + _el("DBInstanceIdentifier", n.id)
        + _el("IsClusterWriter", n.role == "writer")
        + _el("PromotionTier", 1)
        + "</DBClusterMember>"
        for n in state.nodes
    )
    engine = "aurora-postgresql" if state.engine == "postgresql" else "aurora-mysql"
    return (
        "<DBCluster>"
        + _el("DBClusterIdentifier", state.name)
        + _el("Status", "available")
        + _el("Engine", engine)
        + _el("Endpoint", state.cluster_endpoint)
        + _el("ReaderEndpoint", state.reader_endpoint)
        + _el("Port", state.port)
        + f"<DBClusterMembers>{members}</DBClusterMembers>"
        + _el("DBClusterArn", _arn(state, "cluster", state.name))
        + "</DBCluster>"
    )


def _instances(state: st.LabState) -> str:
    return "".join(
        "<DBInstance>"
        + _el("DBInstanceIdentifier", n.id)
        + _el("DBClusterIdentifier", state.name)
        + _el("DBInstanceStatus", "available")
        + "<Endpoint>"
        + _el("Address", state.instance_endpoint(n.id))
        + _el("Port", n.port)
        + "</Endpoint>"
        + "</DBInstance>"
        for n in state.nodes
    )


def _ok(action: str, body: str) -> tuple[int, str]:
    return 200, (
        f'<{action}Response xmlns="{_NS}"><{action}Result>{body}</{action}Result>'
        f"<ResponseMetadata>{_el('RequestId', uuid.uuid4())}</ResponseMetadata>"
        f"</{action}Response>"
    )


def _error(status: int, code: str, message: str) -> tuple[int, str]:
    return status, (
        f'<ErrorResponse xmlns="{_NS}"><Error><Type>Sender</Type>{_el("Code", code)}'
        f"{_el('Message', message)}</Error>{_el('RequestId', uuid.uuid4())}</ErrorResponse>"
    )


def _filters(params: Mapping[str, str]) -> dict[str, list[str]]:
    """`Filters.Filter.N.Name` / `Filters.Filter.N.Values.Value.M` as name -> values."""
    found: dict[str, list[str]] = {}
    n = 1
    while f"Filters.Filter.{n}.Name" in params:
        values = []
        m = 1
        while f"Filters.Filter.{n}.Values.Value.{m}" in params:
            values.append(params[f"Filters.Filter.{n}.Values.Value.{m}"])
            m += 1
        found[params[f"Filters.Filter.{n}.Name"]] = values
        n += 1
    return found


def respond(state: st.LabState, params: Mapping[str, str]) -> tuple[int, str]:
    """The HTTP status and XML body RDS would send for the Query API request `params`."""
    action = params.get("Action", "")
    cluster = params.get("DBClusterIdentifier")
    filters = _filters(params)
    wanted = filters.get("db-cluster-id", [])
    if cluster is not None and cluster.lower() != state.name:
        return _error(404, "DBClusterNotFoundFault", f"DBCluster {cluster} not found.")
    if wanted and state.name not in [w.lower() for w in wanted]:
        body = {
            "DescribeDBClusterEndpoints": "<DBClusterEndpoints/>",
            "DescribeDBClusters": "<DBClusters/>",
            "DescribeDBInstances": "<DBInstances/>",
        }.get(action)
        if body is not None:
            return _ok(action, body)
    if action == "DescribeDBClusterEndpoints":
        rows = _endpoints(state)
        name = params.get("DBClusterEndpointIdentifier")
        if name is not None:
            rows = [r for r in rows if _el("DBClusterEndpointIdentifier", name.lower()) in r]
        kinds = [k.upper() for k in filters.get("db-cluster-endpoint-type", [])]
        if kinds:
            rows = [r for r in rows if any(_el("EndpointType", k) in r for k in kinds)]
        return _ok(action, "<DBClusterEndpoints>" + "".join(rows) + "</DBClusterEndpoints>")
    if action == "DescribeDBClusters":
        return _ok(action, f"<DBClusters>{_cluster(state)}</DBClusters>")
    if action == "DescribeDBInstances":
        instance = params.get("DBInstanceIdentifier")
        if instance is not None and all(n.id != instance for n in state.nodes):
            return _error(404, "DBInstanceNotFound", f"DBInstance {instance} not found.")
        body = _instances(state)
        if instance is not None:
            body = "".join(
                f"<DBInstance>{part}"
                for part in body.split("<DBInstance>")
                if _el("DBInstanceIdentifier", instance) in part
            )
        return _ok(action, f"<DBInstances>{body}</DBInstances>")
    return _error(400, "InvalidAction", f"The action {action or '(none)'} is not valid here.")


class RdsApiServer:
    """Serves `respond` over HTTP on `host` (port 0 picks a free one) from `state()`."""

    def __init__(self, host: str, state: Callable[[], st.LabState], port: int = 0) -> None:
        self._state = state
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                if outer._state().rds_api_down:
                    self.close_connection = True
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(socket.SHUT_RDWR)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode()
                params = {k: v[-1] for k, v in parse_qs(raw, keep_blank_values=True).items()}
                status, body = respond(outer._state(), params)
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                return

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._server.block_on_close = False  # keep-alive clients must not hold up stop()
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self, port_file: Path | None = None) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lab-rds-api", daemon=True
        )
        self._thread.start()
        if port_file is not None:
            tmp = port_file.with_name(f".{port_file.name}.tmp")
            tmp.write_text(str(self.address[1]))
            tmp.replace(port_file)

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
            self._thread = None
        self._server.server_close()
