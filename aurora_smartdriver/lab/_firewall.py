"""The partition fault: iptables rules that drop a node's traffic, tagged so they can be found.

Only the node's own address and port are matched, so nothing else on the machine is affected.
Packets from a client to the node and from the node back are dropped (connects time out and
open connections hang, like a network cut); the node's own outgoing replication connection is
not matched, so a partitioned replica keeps receiving changes (a documented limit).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess

from aurora_smartdriver.lab._engine import Unsupported

_TAG = "aurora-smartdriver-lab"


def _iptables() -> str:
    if os.geteuid() != 0:
        raise Unsupported("the partition fault needs root (it adds iptables rules)")
    path = shutil.which("iptables") or next(
        (p for p in ("/usr/sbin/iptables", "/sbin/iptables") if os.path.exists(p)), None
    )
    if path is None:
        raise Unsupported("the partition fault needs iptables (apt-get install iptables)")
    return path


def _rules(address: str, port: int, tag: str) -> list[list[str]]:
    comment = ["-m", "comment", "--comment", tag]
    return [
        ["INPUT", "-d", address, "-p", "tcp", "--dport", str(port), *comment, "-j", "DROP"],
        ["INPUT", "-s", address, "-p", "tcp", "--sport", str(port), *comment, "-j", "DROP"],
    ]


def _tag(lab_prefix: str, node_id: str) -> str:
    return f"{_TAG}:{lab_prefix}:{node_id}"


def available() -> bool:
    """Whether partition() can work here (root, iptables present and usable)."""
    try:
        ipt = _iptables()
    except Unsupported:
        return False
    probe = subprocess.run([ipt, "-w", "-S", "INPUT"], capture_output=True, check=False)
    return probe.returncode == 0


def partition(lab_prefix: str, node_id: str, address: str, port: int) -> None:
    ipt = _iptables()
    for rule in _rules(address, port, _tag(lab_prefix, node_id)):
        done = subprocess.run([ipt, "-w", "-I", *rule], capture_output=True, check=False)
        if done.returncode != 0:
            heal(lab_prefix, node_id, address, port)
            raise Unsupported(
                f"iptables refused the partition rule: {done.stderr.decode(errors='replace')}"
            )


def heal(lab_prefix: str, node_id: str, address: str, port: int) -> None:
    ipt = _iptables()
    for rule in _rules(address, port, _tag(lab_prefix, node_id)):
        # Delete every copy (a rule inserted twice needs deleting twice).
        while (
            subprocess.run([ipt, "-w", "-D", *rule], capture_output=True, check=False).returncode
            == 0
        ):
            pass


def leftover_rules(lab_prefix: str | None = None) -> list[str]:
    """The lab's rules still installed (all labs', or one lab's)."""
    try:
        ipt = _iptables()
    except Unsupported:
        return []
    out = subprocess.run([ipt, "-w", "-S", "INPUT"], capture_output=True, check=False)
    marker = f"{_TAG}:{lab_prefix}:" if lab_prefix else _TAG
    return [line for line in out.stdout.decode().splitlines() if marker in line]


def rule_prefix(rule: str) -> str:
    """The lab subnet (``127.a.b``) a rule listed by :func:`leftover_rules` belongs to."""
    tag = next((word for word in shlex.split(rule) if word.startswith(f"{_TAG}:")), "")
    return tag.split(":")[1] if tag.count(":") >= 2 else ""


def remove_all(lab_prefix: str) -> None:
    """Remove every rule of one lab (on tear-down)."""
    ipt = _iptables()
    for line in leftover_rules(lab_prefix):
        args = shlex.split(line)  # iptables -S quotes the comment
        if args[:1] == ["-A"]:
            subprocess.run([ipt, "-w", "-D", *args[1:]], capture_output=True, check=False)
