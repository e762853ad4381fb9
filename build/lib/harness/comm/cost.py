"""What a collective costs on a link, as the paper's simulator charges it (bits ÷ bandwidth, no overlap): the
analytic backend's network model and the fidelity verdict's expectation for an emulated point."""

from __future__ import annotations

TCP_FRAMING = 1514 / 1448  # link bytes per payload byte in full-size TCP/IPv4 segments (timestamps on) in Ethernet
# frames: what HTB counts against a link's rate


def charge_seconds(op: str, nbytes: int, world: int, bw_mbps: float, unit: float, model: str, overhead: float) -> float:
    if world <= 1 or nbytes == 0:
        return 0.0
    if model == "paper":
        volume = nbytes if op in ("all_gather", "all_to_all") else nbytes / world
    elif op == "all_gather":
        volume = (world - 1) * nbytes
    elif op == "all_to_all":
        volume = (world - 1) / world * nbytes
    else:
        volume = 2 * (world - 1) / world * nbytes
    return volume * 8 * overhead / (bw_mbps * unit)
