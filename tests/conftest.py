import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/threadcomm.py
sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    from harness.models import ModelConfig

    def make(kind: str, tokens: int, **kw):
        base = dict(layers=2, hidden=64, heads=4, tokens=tokens, num_classes=10, patch_size=4, vocab_size=100,
                    max_positions=64, ln_eps=1e-5)
        base.update(kw)
        return ModelConfig(name=f"{kind}_test", kind=kind, **base)

    return make
