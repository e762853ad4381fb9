"""The topologies under the stock Mininet CLI, as documented: ``mn --custom topologies/star.py --topo star,4`` and
``--topo mesh,3`` build networks in which mn's own ``pingall`` reaches every host. Needs root and Mininet's ``mn``
(CI runs as root and installs it); elsewhere it skips with the reason. Our names carry the ``astr`` prefix."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.mininet,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mn") or not shutil.which("brctl"),
                       reason="needs root, mn and brctl (apt-get install mininet bridge-utils; scripts/setup.sh does)"),
]


def our_interfaces() -> list[str]:
    out = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.startswith("astrt")]


@pytest.mark.parametrize("topo, hosts", [("star,3", 3), ("mesh,3", 3), ("star,2,bw=10", 2), ("mesh,4,bw=10", 4)])
def test_mn_pingall_reaches_every_host(topo, hosts):
    names = "hprefix=astrth,sprefix=astrts"
    p = subprocess.run(["mn", "--custom", str(REPO / "topologies" / "star.py"), "--topo", f"{topo},{names}",
                        "--test", "pingall"], capture_output=True, text=True, timeout=120, cwd=REPO)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-3000:]
    pairs = hosts * (hosts - 1)
    assert re.search(rf"Results: 0% dropped \({pairs}/{pairs} received\)", out), out[-3000:]
    if "bw=10" in topo:  # shaped: mn reports each link's rate
        assert "(10.00Mbit)" in out, out[-3000:]
    assert not our_interfaces(), "mn left interfaces behind"
