"""The package installs anywhere: pyproject lists every package, and a wheel installed (not editable) into a scratch
virtual environment runs the quickstart sweep and a user's own experiment from a folder outside the checkout, with
conf/ and the paper's tables read from the package itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parents[1]


def test_pyproject_lists_every_package():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {".".join(p.parent.relative_to(REPO).parts) for d in ("harness", "topologies", "hydra_plugins")
               for p in (REPO / d).rglob("__init__.py")}
    assert set(tool["packages"]) == folders | {"harness.conf", "harness.paper_data"}
    assert tool["package-dir"] == {"harness.conf": "conf", "harness.paper_data": "results/paper"}


@pytest.mark.slow
def test_a_wheel_installed_elsewhere_runs_the_quickstart(tmp_path):
    wheels, src = tmp_path / "wheels", tmp_path / "src"

    def skip(folder, names):  # build from a copy: a build leaves build/ and *.egg-info beside the sources
        here = Path(folder)
        return [n for n in names if n in (".venv", ".git", "build", "dist", "__pycache__") or n.endswith(".egg-info")
                or (here == REPO / "results" and n != "paper")]

    shutil.copytree(REPO, src, ignore=skip)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(wheels), str(src)], check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip())
    # the dependencies come from this environment's site-packages (added after the scratch venv's own, so only
    # the wheel provides harness: this environment's editable install of the checkout is not activated there)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", *map(str, wheels.glob("*.whl"))], check=True, capture_output=True, timeout=300)
    work = tmp_path / "elsewhere"
    (work / "mine" / "experiment").mkdir(parents=True)
    (work / "mine" / "experiment" / "tiny.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /network: analytic\ntokens: 16\nrepeats: 1\nwarmup: 0\n"
        "solo_repeats: 0\nhydra:\n  sweeper:\n    params:\n      method: single,sp\n      devices: 2\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import harness.paths as p; print(p.CHECKOUT, "
                            "p.CONF_DIR)"], cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith("None ") and str(site) in where, where  # the package's own conf/, not the checkout's
    bench = str(venv / "bin" / "astra-bench")
    quick = subprocess.run([bench, "-m", "experiment=quickstart", "results.path=q.parquet"], cwd=work, env=env,
                           capture_output=True, text=True, timeout=600)
    assert quick.returncode == 0, quick.stderr[-3000:]
    rows = [json.loads(ln) for ln in quick.stdout.splitlines() if ln.startswith("{")]
    assert sorted(r["method"] for r in rows) == ["astra", "single", "sp", "tp"]
    assert all(r["status"] == "ok" for r in rows)
    mine = subprocess.run([bench, "-cd", "mine", "-m", "experiment=tiny", "results.path=m.parquet"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=600)
    assert mine.returncode == 0, mine.stderr[-3000:]
    assert "sweep finished: 2 ok, 0 failed" in mine.stderr
    report = subprocess.run([str(venv / "bin" / "astra-report"), "m.parquet", "--out", "report"], cwd=work,
                            env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-3000:]  # the paper's tables, from the package
    assert (work / "report" / "fig1.md").is_file()
