"""HTB shaping commands: the link's class, the priority class for small packets and its filter, live rate changes
of every class; and, as root in namespaces this test creates, that a receiver's acknowledgements really go through
the priority class and that a live change reaches all classes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from types import SimpleNamespace

import pytest

from harness.network.mininet.shaping import ACK_SHARE, htb_burst, htb_commands, leaves, netem_commands


def kbit(cmd: str, key: str) -> int:
    return int(re.search(rf"\b{key} (\d+)kbit", cmd).group(1))


def classes(cmds: list[str]) -> dict[str, str]:
    return {re.search(r"classid (\S+)", c).group(1): c for c in cmds if " class " in c}


def test_priority_class_for_small_packets_under_the_link_rate():
    cmds = htb_commands("e0", 10, 10)
    assert cmds[0] == "tc qdisc replace dev e0 root handle 5: htb default 11"  # unclassified packets: data
    cls = classes(cmds)
    assert set(cls) == {"5:1", "5:11", "5:12"}
    assert "parent 5: " in cls["5:1"] and "parent 5:1 " in cls["5:11"] and "parent 5:1 " in cls["5:12"]
    # the leaves' assured rates add up to the link's, each may borrow up to it, and small packets go first
    assert kbit(cls["5:11"], "rate") + kbit(cls["5:12"], "rate") == kbit(cls["5:1"], "rate") == 10_000
    assert kbit(cls["5:12"], "rate") == 10_000 * ACK_SHARE
    assert all(kbit(c, "ceil") == 10_000 for c in cls.values())
    assert "prio 0" in cls["5:12"] and "prio 1" in cls["5:11"]
    assert all(f"burst {htb_burst(10, 10)} cburst {htb_burst(10, 10)}" in c for c in cls.values())
    (flt,) = [c for c in cmds if " filter " in c]
    # TCP (protocol 6) whose IP total length (bytes 2-3) has no bit at 128 or above: under 128 bytes
    assert "match ip protocol 6 0xff" in flt and "match u16 0x0000 0xff80 at 2" in flt and flt.endswith("5:12")


@pytest.mark.parametrize("bw", [10 / 2.29, 0.2, 1000, 43.7])
def test_leaves_add_up_to_the_link_at_any_rate(bw):
    cls = classes(htb_commands("e0", bw, 10))
    link = kbit(cls["5:1"], "rate")
    assert link == round(bw * 1000) and kbit(cls["5:11"], "rate") + kbit(cls["5:12"], "rate") == link
    assert kbit(cls["5:12"], "rate") >= 1


def test_point_keys_keep_the_fifo_of_older_rows():
    """Rows stored before the option had one FIFO: a point with it keeps their key, the default gets a new one."""
    from harness.network.mininet.backend import MininetBackend
    from harness.spec.build import build_spec, compose
    from harness.spec.identity import point_key

    def spec(*extra):
        return build_spec(compose(["network=mininet", "method=sp", "devices=2", "model=vit_tiny", *extra]))

    assert "htb_ack_class" not in MininetBackend.identity(spec("network.htb_ack_class=false"))
    assert MininetBackend.identity(spec())["htb_ack_class"] is True
    assert point_key(spec()) != point_key(spec("network.htb_ack_class=false"))
    # stock Mininet shaping has one FIFO whatever the option says
    assert point_key(spec("network.htb_stock=true")) == point_key(spec("network.htb_stock=true",
                                                                       "network.htb_ack_class=false"))


def test_live_change_reaches_every_class_and_keeps_the_filter():
    cmds = htb_commands("e0", 43.7, 10, "change")
    assert all(c.startswith("tc class change dev e0 ") for c in cmds), cmds
    cls = classes(cmds)
    assert set(cls) == {"5:1", "5:11", "5:12"}
    assert all(kbit(c, "ceil") == 43_700 for c in cls.values())
    assert kbit(cls["5:11"], "rate") + kbit(cls["5:12"], "rate") == 43_700


def test_one_fifo_without_the_class_and_stock_unchanged():
    cmds = htb_commands("e0", 100, 10, ack_class=False)
    assert cmds[0].endswith("htb default 1") and set(classes(cmds)) == {"5:1"} and len(cmds) == 2
    stock = htb_commands("e0", 100, 10, stock=True)
    assert stock[-1] == "tc class add dev e0 parent 5: classid 5:1 htb rate 100mbit burst 15k" and len(stock) == 2
    assert leaves() == ["5:11", "5:12"] and leaves(stock=True) == leaves(ack_class=False) == ["5:1"]
    with pytest.raises(ValueError, match="add or change"):
        htb_commands("e0", 10, 10, "replace")


def test_netem_under_every_leaf():
    net = SimpleNamespace(delay_ms=5, max_queue=None)
    cmds = netem_commands("e0", net, leaves())
    assert [re.search(r"parent (\S+) handle (\S+)", c).groups() for c in cmds] == [("5:11", "10:"), ("5:12", "11:")]
    assert all(c.endswith("netem delay 5.0ms") for c in cmds)
    assert netem_commands("e0", SimpleNamespace(delay_ms=None, max_queue=None), leaves()) == []


def _root_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, tc)"
    tools = [t for t in ("ip", "tc", "ethtool") if shutil.which(t) is None]
    return f"needs {', '.join(tools)}" if tools else None


def _class_packets(ns: str, dev: str) -> dict[str, int]:
    out = subprocess.run(["ip", "netns", "exec", ns, "tc", "-s", "class", "show", "dev", dev], capture_output=True,
                         text=True, check=True, timeout=10).stdout
    stats = re.finditer(r"class htb (\S+) .*?Sent \d+ bytes (\d+) pkt", out, re.DOTALL)
    return {m.group(1): int(m.group(2)) for m in stats}


@pytest.mark.slow
@pytest.mark.skipif(_root_reason() is not None, reason=str(_root_reason()))
def test_receivers_acknowledgements_take_the_priority_class(tmp_path):
    """A bulk transfer from namespace a to b, both ends shaped: b sends almost only pure ACKs, and they leave b
    through 5:12, while a's data leaves through 5:11. A live change then shows the new rate on all three classes."""
    from netns import sh, veth_pair

    def tc(n, cmd):
        sh("ip", "netns", "exec", n, *cmd.split())

    ips = ["10.213.9.1", "10.213.9.2"]
    with veth_pair("astk", ips) as (ns, veth):
        for n, v in zip(ns, veth):
            sh("ip", "netns", "exec", n, "ethtool", "-K", v, "tso", "off", "gso", "off", "gro", "off")  # as Mininet's
            for cmd in htb_commands(v, 50, 10):
                tc(n, cmd)
        port = 29571
        server = ("import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1); "
                  f"s.bind(('{ips[1]}',{port})); s.listen(1); print('up',flush=True); c,_=s.accept(); n=0\n"
                  "while True:\n d=c.recv(65536)\n if not d: break\n n+=len(d)\nprint(n,flush=True)")
        recv = subprocess.Popen(["ip", "netns", "exec", ns[1], sys.executable, "-c", server], stdout=subprocess.PIPE,
                                text=True)
        try:
            assert recv.stdout.readline().strip() == "up"
            payload = 2_000_000  # 0.32 s at 50 Mbit/s
            client = (f"import socket; s=socket.create_connection(('{ips[1]}',{port}),timeout=20); "
                      f"s.sendall(bytes({payload})); s.close()")
            sh("ip", "netns", "exec", ns[0], sys.executable, "-c", client)
            assert int(recv.communicate(timeout=30)[0].strip()) == payload
        finally:
            if recv.poll() is None:
                recv.kill()
                recv.wait()
        sender, receiver = _class_packets(ns[0], veth[0]), _class_packets(ns[1], veth[1])
        assert sender["5:11"] > 1000, sender  # ~1400 full-size segments of data
        assert receiver["5:12"] > 100 and receiver["5:11"] < 0.05 * receiver["5:12"], receiver  # ACKs, not data
        for cmd in htb_commands(veth[0], 7.5, 10, "change"):
            tc(ns[0], cmd)
        out = subprocess.run(["ip", "netns", "exec", ns[0], "tc", "class", "show", "dev", veth[0]],
                             capture_output=True, text=True, check=True, timeout=10).stdout
        assert len(re.findall(r"ceil 7500Kbit", out)) == 3, out
