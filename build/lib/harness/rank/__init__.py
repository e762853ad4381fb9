"""One rank: the serve loop and ``run_rank`` (``worker``), how it times inferences and solo samples (``timing``),
and its compute measured alone (``profile``)."""
