"""``network=mininet``: ranks in Mininet hosts on shaped links (``backend``), the hosts and their persistent workers
(``session``), loss and live traces (``conditions``, ``trace``), HTB commands (``shaping``) and our footprint on the
machine (``host_state``)."""

from harness.network.mininet import backend  # noqa: F401 - registers network=mininet
