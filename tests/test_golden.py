"""Same results as before the controller was restructured, for the same seed: a fixed loopback/analytic grid
(``tests/golden.py``) gives rows equal, in every column but timings, ids, timestamps and the raw config, to the ones
recorded in ``tests/data/golden_rows.json``."""

from __future__ import annotations

import json

import pytest
from golden import GOLDEN, IDENTITY, grid_rows


@pytest.mark.slow
def test_fixed_grid_rows_unchanged(tmp_path):
    old = json.loads(GOLDEN.read_text())
    new = grid_rows(tmp_path)
    assert [[r[k] for k in IDENTITY] for r in new] == [[r[k] for k in IDENTITY] for r in old]
    for before, after in zip(old, new):
        where = " ".join(str(before[k]) for k in IDENTITY)
        for key, value in before.items():
            assert key in after, f"{where}: column {key} disappeared"
            if isinstance(value, float):
                assert after[key] == pytest.approx(value, rel=1e-4, abs=1e-6), f"{where}: {key}"
            else:
                assert after[key] == value, f"{where}: {key}"
