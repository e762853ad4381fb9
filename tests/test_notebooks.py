"""Every notebook in notebooks/ runs (jupytext text -> notebook -> nbclient) on small stores made here: latency
points from the analytic backend with the paper's compute, accuracy rows from a smoke-size astra-train run."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.py"))


@pytest.fixture(scope="module")
def latency_store(tmp_path_factory):
    from harness.bench import run_point
    from harness.spec.build import build_spec, compose

    store = tmp_path_factory.mktemp("nb") / "latency.parquet"
    base = ["model=vit_base", "network=analytic", "network.compute=fitted", "network.collective_model=paper",
            "network.mbps_unit=1048576", "repeats=1", "warmup=0", "solo_repeats=0", f"results.path={store}"]
    shaped = [["method=astra", "method.groups=16", "devices=4"], ["method=bp_ag", "devices=4"],
              ["method=bp_sp", "devices=4"], ["method=tp", "devices=4"],
              ["method=astra", "method.groups=1", "devices=4", "tokens=256"], ["method=bp_ag", "devices=4", "tokens=256"]]
    for dev in (2, 4, 8):
        shaped += [["method=astra", "method.groups=1", f"devices={dev}"], ["method=sp", f"devices={dev}"]]
    points = [["method=single", "tokens=1024"], ["method=single", "tokens=256"]]
    points += [p + [f"network.bandwidth_mbps={bw}"] for bw in (10, 100) for p in shaped]
    for p in points:
        tokens = [] if any(a.startswith("tokens=") for a in p) else ["tokens=1024"]
        run_point(build_spec(compose([*base, *p, *tokens])), sweep=False)
    return store


@pytest.fixture(scope="module")
def accuracy_store(digits_smoke):
    """The accuracy rows of the suite's one smoke-size astra-train run (``conftest.digits_smoke``)."""
    return digits_smoke[0] / "acc.parquet"


def execute(path: Path, env: dict) -> str:
    """Run the notebook in a fresh kernel from the repository root; return all its text output."""
    import jupytext
    from nbclient import NotebookClient

    nb = jupytext.read(path)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    os.environ["MPLBACKEND"] = "Agg"
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
    texts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            texts.append(out.get("data", {}).get("text/plain", ""))
    return "\n".join(texts)


def test_every_notebook_is_tested():
    assert {p.stem for p in NOTEBOOKS} == {"latency_figures", "device_scaling", "token_scaling", "accuracy_tables"}


@pytest.mark.slow
@pytest.mark.parametrize("name,words", [
    ("latency_figures", ["paper-fitted", "ASTRA G=1", "BP+AG Nb=1", "over TP", "fig1"]),
    ("device_scaling", ["ASTRA G=1", "paper-fitted", "fig7"]),
    ("token_scaling", ["fitted jointly", "fig8"]),
])
def test_latency_notebooks_run(latency_store, name, words):
    text = execute(REPO / "notebooks" / f"{name}.py", {"ASTRA_STORE": str(latency_store)})
    for w in words:
        assert w in text, f"{name}: {w!r} not in its output"


@pytest.mark.slow
def test_accuracy_notebook_runs(accuracy_store):
    text = execute(REPO / "notebooks" / "accuracy_tables.py", {"ASTRA_ACCURACY": str(accuracy_store)})
    assert "paper CIFAR-100" in text and "88.95" in text  # Table 1's G=1 value beside ours


def test_a_notebook_started_in_its_folder_finds_the_checkouts_store(tmp_path, monkeypatch):
    from harness.paths import results_file

    monkeypatch.chdir(REPO / "notebooks")
    assert results_file("results.parquet") == REPO / "results" / "results.parquet"
