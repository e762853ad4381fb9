"""Two network namespaces joined by a veth pair, created for a test and deleted after it (root only)."""

from __future__ import annotations

import contextlib
import os
import subprocess


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def veth_pair(prefix: str, ips: list[str]):
    """Namespaces ``<prefix><pid>a/b`` with interfaces ``...x/y`` at ``ips`` (/24), up with their loopback; yields
    (namespaces, interfaces). Only names carrying the prefix and this process's id are created or deleted."""
    tag = f"{prefix}{os.getpid() % 100000}"
    ns, veth = [f"{tag}a", f"{tag}b"], [f"{tag}x", f"{tag}y"]
    try:
        for n in ns:
            sh("ip", "netns", "add", n)
        sh("ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for n, v, ip in zip(ns, veth, ips):
            sh("ip", "link", "set", v, "netns", n)
            sh("ip", "-n", n, "addr", "add", f"{ip}/24", "dev", v)
            sh("ip", "-n", n, "link", "set", v, "up")
            sh("ip", "-n", n, "link", "set", "lo", "up")
        yield ns, veth
    finally:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], check=False, capture_output=True, timeout=30)
