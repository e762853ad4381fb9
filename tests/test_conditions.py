"""Network conditions beyond a fixed clean link: packet loss on the emulated links (issue 11). Unit tests of the
rules; the Mininet tests (tests/test_mininet.py) check them in force."""

from __future__ import annotations

import re

import pytest

from harness.network.mininet import LOSS_TABLE, loss_ruleset


def test_loss_rules_name_only_our_interfaces_both_ways():
    rules = loss_ruleset(["astrh1-eth0", "astrh1-eth1"], 2.5)
    assert f"table inet {LOSS_TABLE}" in rules
    # one drop rule per direction, each limited to the host's own links, at 2.5 % = 25000 per million
    drops = [ln.strip() for ln in rules.splitlines() if ln.strip().endswith("drop")]
    assert len(drops) == 2
    assert drops[0].startswith('oifname { "astrh1-eth0", "astrh1-eth1" }')
    assert drops[1].startswith('iifname { "astrh1-eth0", "astrh1-eth1" }')
    assert all(re.search(r"numgen random mod 1000000 < 25000 counter drop$", d) for d in drops)
    assert "hook output" in rules and "hook input" in rules


@pytest.mark.parametrize("pct,per_million", [(0.01, 100), (1, 10000), (50, 500000), (99.9999, 999999)])
def test_loss_probability_rounds_to_the_rule_resolution(pct, per_million):
    assert f"< {per_million} counter drop" in loss_ruleset(["x-eth0"], pct)
