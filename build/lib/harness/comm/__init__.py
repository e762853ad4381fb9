"""Communication: the collectives every method calls (``collectives``: gloo, p2p, ring; the only place they are
called), bit packing of indices (``wire``), and what a collective costs on a link (``cost``: the paper's size ÷
bandwidth)."""
