"""Mininet topologies for astra-bench.

``star``: N hosts on one switch — the paper's setting (devices on a Wi-Fi access point). Each host has its own link
to the switch, shaped in both directions (host egress = upload, switch-port egress = download).
``mesh``: a full mesh of direct point-to-point links, one per host pair (a wired cluster with dedicated links);
hosts have no switch between them. Each host keeps one address (10.0.0.i/32) on all its interfaces, with a host
route to every peer over the direct link.

``bw`` is one number (Mbit/s, every link) or a list with one value per host (star) — heterogeneous devices.
The harness builds ``TOPOLOGIES`` itself; ``topos`` is for the stock CLI, where both work as they are:

    mn --custom topologies/star.py --topo star,4 --test pingall
    mn --custom topologies/star.py --topo mesh,3,bw=10 --test pingall

The CLI's star uses a Linux bridge where Open vSwitch cannot forward (no ``openvswitch`` kernel module: mn's default
switch would silently drop everything), else mn's ``--switch``; a ``bw`` shapes the links (HTB, as ``--link tc``).
The CLI's mesh hosts set their addresses and routes themselves, so mn's own tests reach every peer.
"""

from __future__ import annotations

import os

from mininet.link import TCLink
from mininet.node import Host
from mininet.nodelib import LinuxBridge
from mininet.topo import Topo


def per_host(value, n: int, what: str = "bw") -> list:
    """Broadcast a scalar to ``n`` hosts, or check a list has exactly ``n`` entries."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} lists {len(value)} values for {n} hosts: give one value or {n}")
        return list(value)
    return [value] * n


def link_opts(bw) -> dict:
    """A link's options: shaped (HTB) at ``bw`` Mbit/s, or as the network's own link class when None."""
    return {"bw": bw, "cls": TCLink} if bw else {}


class StarTopo(Topo):
    """N hosts, one switch; per-host link bandwidth ``bw`` (scalar or list). ``bridge``: the switch's class (None:
    the network's)."""

    def build(self, n: int = 2, bw=None, hprefix: str = "h", sprefix: str = "s", bridge=None):
        switch = self.addSwitch(f"{sprefix}1", **({"cls": bridge} if bridge else {}))
        for i, b in enumerate(per_host(bw, n), start=1):
            host = self.addHost(f"{hprefix}{i}", ip=f"10.0.0.{i}/24")
            self.addLink(host, switch, **link_opts(b))


class MeshTopo(Topo):
    """N hosts with a direct link between every pair (no switch). ``host``: the hosts' class (None: the network's;
    ``MeshHost`` addresses and routes itself, else ``configure_mesh`` does it after start)."""

    def build(self, n: int = 3, bw=None, hprefix: str = "h", sprefix: str = "s", host=None):
        opts = {"cls": host} if host else {}
        hosts = [self.addHost(f"{hprefix}{i}", ip=f"10.0.0.{i}/32", **opts) for i in range(1, n + 1)]
        for a in range(n):
            for b in range(a + 1, n):
                self.addLink(hosts[a], hosts[b], **link_opts(bw))


def address_mesh_host(h) -> None:
    """Give every interface of mesh host ``h`` its one address (``ip`` of its topology entry, /32) and a host route
    to each peer over the direct link."""
    addr = h.params["ip"].split("/")[0]
    for intf in h.intfList():
        if intf.name == "lo":
            continue
        h.cmd(f"ip addr flush dev {intf.name}")
        h.cmd(f"ip addr add {addr}/32 dev {intf.name}")
        peer = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
        h.cmd(f"ip link set {intf.name} up")
        h.cmd(f"ip route replace {peer.node.params['ip'].split('/')[0]}/32 dev {intf.name}")
        intf.ip, intf.prefixLen = addr, 32  # what Mininet reports; set above


def configure_mesh(net, hosts) -> None:
    """Address and route every mesh host (hosts of the network's own class, after start)."""
    for h in hosts:
        address_mesh_host(h)


class MeshHost(Host):
    """A mesh host that addresses and routes itself when the network configures it (the stock CLI)."""

    def config(self, **params):
        r = super().config(**params)
        address_mesh_host(self)
        return r


def ovs_can_forward() -> bool:
    """Whether this kernel has Open vSwitch's datapath (built in, or as a loaded module)."""
    return os.path.isdir("/sys/module/openvswitch")


def cli_star(n: int = 2, bw=None, **kw) -> StarTopo:
    return StarTopo(n=n, bw=bw, bridge=None if ovs_can_forward() else LinuxBridge, **kw)


def cli_mesh(n: int = 3, bw=None, **kw) -> MeshTopo:
    return MeshTopo(n=n, bw=bw, host=MeshHost, **kw)


TOPOLOGIES = {"star": StarTopo, "mesh": MeshTopo}  # what the harness builds (its own switch, host and link classes)
topos = {"star": cli_star, "mesh": cli_mesh}  # what `mn --custom topologies/star.py --topo <name>,<n>` builds
