"""HTB shaping as tc commands: the burst rule and the commands for a link direction (netem where the kernel has it)."""

from __future__ import annotations

MIN_BURST = 3028  # two full Ethernet frames


def htb_burst(bw: float, burst_ms: float) -> int:
    """Bytes HTB may send at line rate after idle: ``burst_ms`` worth of the rate, at least two frames.

    Measured here (astra-calibrate, iperf3, reno): with 1 ms, 1 Gbit/s reaches only 0.91-0.93 of its rate (HTB's
    dequeue granularity on a 2-core machine); with 10 ms all of 10/100/1000 reach 0.957, which is the TCP goodput
    ceiling of 1448-byte segments in 1514-byte frames. The price: a transfer starting after idle gains at most
    10 ms (stock Mininet's 15 kB is 12 ms at 10 Mbit/s, but only 0.12 ms at 1 Gbit/s)."""
    return max(MIN_BURST, int(bw * 1e6 / 8 * burst_ms / 1e3))


def htb_commands(intf: str, bw: float, burst_ms: float, verb: str = "add", stock: bool = False) -> list[str]:
    """tc commands shaping ``intf`` to ``bw`` Mbit/s (``verb`` add = first time, change = live). ``stock``
    reproduces Mininet's own TCLink HTB class (fixed 15 kB burst, default ceil/cburst), for comparison only."""
    cmds = [f"tc qdisc replace dev {intf} root handle 5: htb default 1"] if verb == "add" else []
    if stock:
        cmds.append(f"tc class {verb} dev {intf} parent 5: classid 5:1 htb rate {bw}mbit burst 15k")
        return cmds
    burst = htb_burst(bw, burst_ms)
    cmds.append(f"tc class {verb} dev {intf} parent 5: classid 5:1 htb rate {bw}mbit ceil {bw}mbit "
                f"burst {burst} cburst {burst} quantum 1514")
    return cmds


def netem_command(intf: str, net) -> str | None:
    """The netem qdisc for ``net``'s delay / queue limit, or None when none is set (loss is nftables' job, in the
    hosts: one mechanism on every kernel)."""
    args = []
    if net.delay_ms:
        args.append(f"delay {float(net.delay_ms)}ms")
    if net.max_queue:
        args.append(f"limit {int(net.max_queue)}")
    return f"tc qdisc replace dev {intf} parent 5:1 handle 10: netem {' '.join(args)}" if args else None
