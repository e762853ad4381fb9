"""``network=loopback``: N worker processes on 127.0.0.1, no shaping — compute and local transport only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.launch import check_port_free, launch_local
from harness.network.base import Backend, NetworkOptions, Result, register
from harness.options import opt


@dataclass
class LoopbackOptions(NetworkOptions):
    name: str = opt("loopback", "the backend")
    port: int | None = opt(None, "rendezvous port (default: a free one)", lo=1, hi=65535)


@register
class LoopbackBackend(Backend):
    name = "loopback"
    Options = LoopbackOptions

    @classmethod
    def identity(cls, spec) -> dict:
        return {"name": cls.name}  # the port changes nothing measured

    def __init__(self, spec):
        super().__init__(spec)
        if spec.network.port is not None:
            check_port_free(spec.network.port)

    def run(self, spec, workdir: Path) -> Result:
        if spec.stream_s:
            spec = spec.replace(stream_real_s=float(spec.stream_s))
        return Result(launch_local(spec, workdir, spec.network.port))
