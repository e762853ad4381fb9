import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # tests/threadcomm.py
sys.path.insert(0, str(ROOT))

torch.set_num_threads(1)
os.environ.setdefault("LOKY_MAX_CPU_COUNT", str(os.cpu_count() or 1))  # joblib (k-means): no probe process


@pytest.fixture
def tiny_cfg():
    from harness.models import ModelConfig

    def make(kind: str, tokens: int, **kw):
        base = dict(layers=2, hidden=64, heads=4, tokens=tokens, num_classes=10, patch_size=4, vocab_size=100,
                    max_positions=64, ln_eps=1e-5)
        base.update(kw)
        if kind == "llama":  # grouped-query (two query heads per key/value head), an inner width no multiple of
            base.setdefault("kv_heads", max(1, base["heads"] // 2))  # the hidden size, an untied LM head
            base.setdefault("mlp_hidden", base["hidden"] * 11 // 4)
            base.setdefault("tie_embeddings", False)
            base.setdefault("rope_theta", 500.0)
        return ModelConfig(name=f"{kind}_test", kind=kind, **base)

    return make


@pytest.fixture(scope="session")
def digits_smoke(tmp_path_factory):
    """One smoke-size astra-train run of the digits ViT with G=1 and G=16 (DCT) and G=1 with a single class token,
    K=16, every stage and evaluation: (its folder, the finished process). Shared by test_train_cli and the accuracy
    notebook's test, so the suite trains it once."""
    import os
    import subprocess

    tmp = tmp_path_factory.mktemp("vit")
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "harness.train", "task=digits_smoke", f"out_dir={tmp}/out",
                        f"results_path={tmp}/acc.parquet", "astra.codebook_size=16", "suite.groups=[1,16]",
                        "suite.dct_off_groups=[1]"], cwd=tmp, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-4000:]
    return tmp, p


# Quick queries a fast test may run: the provenance of a row reads the checkout's commit; device.tick_us=auto probes
# whether cyclictest may take a real-time priority (once per process).
QUICK_COMMANDS = {"git", "cyclictest"}


@pytest.fixture(autouse=True)
def processes_need_a_marker(request, monkeypatch):
    """The fast lane (``pytest -m "not slow and not mininet"``) starts no process: a test that starts one (a rank, a
    CLI run, a sweep) must carry the ``slow`` or ``mininet`` marker, and fails here if it does not."""
    if request.node.get_closest_marker("slow") or request.node.get_closest_marker("mininet"):
        yield
        return
    import multiprocessing.process
    import subprocess

    real = subprocess.Popen.__init__

    def guarded(self, args, *a, **kw):
        first = args[0] if isinstance(args, (list, tuple)) else str(args).split()[0]
        if Path(str(first)).name not in QUICK_COMMANDS:
            raise AssertionError(f"this test starts a process ({first}): mark it @pytest.mark.slow (or mininet)")
        return real(self, args, *a, **kw)

    def no_start(self):
        raise AssertionError("this test starts a process (multiprocessing): mark it @pytest.mark.slow")

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, "start", no_start)
    yield
