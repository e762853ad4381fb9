"""Mininet topologies for astra-bench.

``star``: N hosts on one switch — the paper's setting (devices on a Wi-Fi access point). Each host has its own link
to the switch, shaped in both directions (host egress = upload, switch-port egress = download).
``mesh``: a full mesh of direct point-to-point links, one per host pair (a wired cluster with dedicated links);
hosts have no switch between them.

``bw`` is one number (Mbit/s, every link) or a list with one value per host (star) — heterogeneous devices.
Works with the stock CLI too:

    mn --custom topologies/star.py --topo star,4 --switch lxbr --controller none --link tc
    mn --custom topologies/star.py --topo mesh,3 --controller none
"""

from __future__ import annotations

from mininet.topo import Topo


def per_host(value, n: int, what: str = "bw") -> list:
    """Broadcast a scalar to ``n`` hosts, or check a list has exactly ``n`` entries."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{what} lists {len(value)} values for {n} hosts: give one value or {n}")
        return list(value)
    return [value] * n


class StarTopo(Topo):
    """N hosts, one switch; per-host link bandwidth ``bw`` (scalar or list)."""

    def build(self, n: int = 2, bw=None, hprefix: str = "h", sprefix: str = "s"):
        switch = self.addSwitch(f"{sprefix}1")
        for i, b in enumerate(per_host(bw, n), start=1):
            host = self.addHost(f"{hprefix}{i}", ip=f"10.0.0.{i}/24")
            self.addLink(host, switch, **({"bw": b} if b else {}))


class MeshTopo(Topo):
    """N hosts with a direct link between every pair (no switch). Addresses and routes are set after start by
    ``configure_mesh``: each host keeps one address (10.0.0.i/32) on all its interfaces, with a host route to every
    peer over the direct link."""

    def build(self, n: int = 3, bw=None, hprefix: str = "h", sprefix: str = "s"):
        hosts = [self.addHost(f"{hprefix}{i}", ip=f"10.0.0.{i}/32") for i in range(1, n + 1)]
        for a in range(n):
            for b in range(a + 1, n):
                self.addLink(hosts[a], hosts[b], **({"bw": bw} if bw else {}))


def configure_mesh(net, hosts) -> None:
    """Give every interface of host i the address 10.0.0.i/32 and route each peer via the direct link."""
    addr = {h.name: f"10.0.0.{i}" for i, h in enumerate(hosts, start=1)}
    for h in hosts:
        for intf in h.intfList():
            if intf.name == "lo":
                continue
            h.cmd(f"ip addr flush dev {intf.name}")
            h.cmd(f"ip addr add {addr[h.name]}/32 dev {intf.name}")
            peer = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
            h.cmd(f"ip route replace {addr[peer.node.name]}/32 dev {intf.name}")
        for intf in h.intfList():
            intf.ip, intf.prefixLen = addr[h.name], 32  # what Mininet reports; set above


topos = {"star": StarTopo, "mesh": MeshTopo}
