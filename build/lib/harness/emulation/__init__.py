"""What keeps emulated devices faithful: time dilation (``dilation``), a finer scheduling tick (``tick``), idle
polling (``idle``), per-rank CPU accounting (``cpustat``) and every point's fidelity verdict (``fidelity``)."""
