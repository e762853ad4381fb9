"""Sweeps: the progress callback and the sweep's summary (``progress``), the Ray launcher (``cluster``), MLflow
tracking (``tracking``)."""
