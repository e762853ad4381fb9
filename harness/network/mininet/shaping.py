"""HTB shaping as tc commands: the burst rule, the classes of a link direction, and netem where the kernel has it.

A shaped direction is one HTB class at the link's rate. Under it, by default, two leaves share that rate: small
packets (IP length under 128 bytes: pure TCP acknowledgements, handshakes, tiny messages) in a priority class of
their own, everything else in the data class. A stock Linux host sends through a per-flow queue (fq_codel), where
an acknowledgement never waits behind the host's own bulk data; in a single HTB FIFO it does, and from three hosts
on (a ring, where a receiver's acknowledgements cannot ride on data flowing back to the same peer) each ring
step's sender then runs out of window while its acknowledgements queue. Measured (benchmarks/collectives.py, 4
hosts, ring all-gather): 0.72 / 0.83 / 0.94 of the link with 48 / 192 / 768 KiB shards in one FIFO, 0.94 / 0.97 /
0.98 with the priority class. The kernels here have no fq_codel or prio qdisc, so this is done with HTB classes
and a u32 filter (the kernel's ``cls_u32``). The filter matches IPv4 only: over IPv6 (``network=real``) everything
goes to the data class, as with one FIFO."""

from __future__ import annotations

MIN_BURST = 3028  # two full Ethernet frames
ACK_SHARE = 0.05  # the small-packet class's assured share of the rate (acknowledgements are ~3 % of the data)
SMALL_IP_LEN = 128  # IP total length below which a TCP packet counts as small (a power of two: one u32 mask)
ROOT, LINK, DATA, ACKS = "5:", "5:1", "5:11", "5:12"


def htb_burst(bw: float, burst_ms: float) -> int:
    """Bytes HTB may send at line rate after idle: ``burst_ms`` worth of the rate, at least two frames.

    Measured here (astra-calibrate, iperf3, reno): with 1 ms, 1 Gbit/s reaches only 0.91-0.93 of its rate (HTB's
    dequeue granularity on a 2-core machine); with 10 ms all of 10/100/1000 reach 0.957, which is the TCP goodput
    ceiling of 1448-byte segments in 1514-byte frames. The price: a transfer starting after idle gains at most
    10 ms (stock Mininet's 15 kB is 12 ms at 10 Mbit/s, but only 0.12 ms at 1 Gbit/s)."""
    return max(MIN_BURST, int(bw * 1e6 / 8 * burst_ms / 1e3))


def _kbit(mbps: float) -> int:
    """A rate in whole kbit/s (tc's parser and its printout agree on them), at least 1."""
    return max(1, round(mbps * 1000))


def htb_commands(intf: str, bw: float, burst_ms: float, verb: str = "add", stock: bool = False,
                 ack_class: bool = True) -> list[str]:
    """tc commands shaping ``intf`` to ``bw`` Mbit/s (``verb`` add = first time, change = live: every class's rate,
    the filter stays). ``ack_class``: small packets in a priority leaf of their own under the link's class (see the
    module's docstring). ``stock`` reproduces Mininet's own TCLink HTB class (fixed 15 kB burst, default
    ceil/cburst, one FIFO), for comparison only."""
    if verb not in ("add", "change"):
        raise ValueError(f"verb must be add or change, not {verb!r}")
    first = verb == "add"
    if stock:
        cmds = [f"tc qdisc replace dev {intf} root handle {ROOT} htb default 1"] if first else []
        cmds.append(f"tc class {verb} dev {intf} parent {ROOT} classid {LINK} htb rate {bw}mbit burst 15k")
        return cmds
    burst = htb_burst(bw, burst_ms)
    shape = f"burst {burst} cburst {burst} quantum 1514"
    default = DATA[2:] if ack_class else LINK[2:]
    cmds = [f"tc qdisc replace dev {intf} root handle {ROOT} htb default {default}"] if first else []
    link = _kbit(bw)
    cmds.append(f"tc class {verb} dev {intf} parent {ROOT} classid {LINK} htb rate {link}kbit ceil {link}kbit "
                f"{shape}")
    if not ack_class:
        return cmds
    acks = min(link - 1, _kbit(bw * ACK_SHARE)) if link > 1 else 1  # the leaves' rates add up to the link's
    data = max(1, link - acks)
    cmds.append(f"tc class {verb} dev {intf} parent {LINK} classid {DATA} htb rate {data}kbit ceil {link}kbit "
                f"{shape} prio 1")
    cmds.append(f"tc class {verb} dev {intf} parent {LINK} classid {ACKS} htb rate {acks}kbit ceil {link}kbit "
                f"{shape} prio 0")
    if first:
        # IPv4, protocol TCP, total length (bytes 2-3 of the IP header) under SMALL_IP_LEN
        mask = 0xFFFF & ~(SMALL_IP_LEN - 1)
        cmds.append(f"tc filter add dev {intf} parent {ROOT} protocol ip prio 1 u32 match ip protocol 6 0xff "
                    f"match u16 0x0000 {mask:#06x} at 2 flowid {ACKS}")
    return cmds


def leaves(stock: bool = False, ack_class: bool = True) -> list[str]:
    """The HTB classes packets are queued in (where a netem qdisc goes)."""
    return [DATA, ACKS] if ack_class and not stock else [LINK]


def netem_commands(intf: str, net, classes: list[str]) -> list[str]:
    """netem qdiscs for ``net``'s delay / queue limit under each of ``classes`` (none when neither is set; loss is
    nftables' job, in the hosts: one mechanism on every kernel)."""
    args = []
    if net.delay_ms:
        args.append(f"delay {float(net.delay_ms)}ms")
    if net.max_queue:
        args.append(f"limit {int(net.max_queue)}")
    if not args:
        return []
    return [f"tc qdisc replace dev {intf} parent {c} handle {10 + i}: netem {' '.join(args)}"
            for i, c in enumerate(classes)]
