"""Keeping this machine's CPUs out of their halt state while emulated devices run.

A dilated device runs in slices of its CFS quota with gaps between them; in a gap its core often has nothing to do
and the kernel halts it. In a virtual machine a halted vCPU is given back to the host, and the slice after the gap
starts on a CPU whose caches and predictors served someone else: ``benchmarks/throttle.py`` measured the same work
costing 1.03x (k = 1.14) to 1.32x (k = 4.57) the CPU time of an unthrottled run on this 2-vCPU VM.

A PM QoS request for zero wake-up latency (``/dev/cpu_dma_latency``, the kernel's documented interface) makes the
cpuidle governor pick the polling state: an idle CPU spins in the kernel's idle loop and leaves it the moment work
arrives. Unlike a busy process it takes no share from anyone. The request lasts while the file stays open and ends
when it is closed, also when the process dies, so nothing is left behind.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

QOS = Path("/dev/cpu_dma_latency")


def available() -> bool:
    """Whether this process may hold the request (root, and the kernel offers the interface)."""
    return QOS.exists() and os.access(QOS, os.W_OK)


class PollIdle:
    """Holds the zero-latency request from ``open()`` (or ``with``) until ``close()``."""

    def __init__(self):
        self.fd: int | None = None

    def open(self) -> "PollIdle":
        if self.fd is None:
            fd = os.open(QOS, os.O_WRONLY)
            try:
                os.write(fd, struct.pack("i", 0))
            except OSError:
                os.close(fd)
                raise
            self.fd = fd
        return self

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def __enter__(self) -> "PollIdle":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()


def current_limit_us() -> int | None:
    """The CPU wake-up latency every request together allows now (µs; 0 while anyone holds the polling state), or
    None where it cannot be read."""
    try:
        fd = os.open(QOS, os.O_RDONLY)
    except OSError:
        return None
    try:
        return struct.unpack("i", os.read(fd, 4))[0]
    except (OSError, struct.error):
        return None
    finally:
        os.close(fd)

