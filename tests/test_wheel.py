"""The default competition, end to end, as a user gets it: a wheel built from the repository, installed in a
fresh venv, `sandbox run` with no argument in an empty folder. The wheel carries the samples, the data set and
the Dockerfile, so nothing here comes from the checkout.
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from sandbox.bundled import sample_dirs
from sandbox.reporting import NIPS_FILES

REPO = Path(__file__).resolve().parent.parent


def _sample_ids(kind: str) -> list[str]:
    return sorted(p.name for p in sample_dirs(kind)[0].iterdir() if (p / "metadata.json").is_file())


@pytest.mark.usefixtures("docker_ready")
def test_wheel_in_a_fresh_venv_runs_the_default_competition(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)], check=True, capture_output=True
    )
    wheel = next(dist.glob("adversarial_sandbox-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", str(wheel)], check=True, capture_output=True)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    result = subprocess.run([str(env_dir / "bin" / "sandbox"), "run"], cwd=workdir, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Defenses" in result.stdout and "base_torch" in result.stdout
    assert "limits per piece: 500 s per 100 images (at least 60 s), memory 4g" in result.stderr

    runs = list((workdir / "runs").iterdir())
    assert len(runs) == 1
    out = runs[0]
    for name in [*NIPS_FILES, "results.json", "manifest.json", "report.html"]:
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    # The samples and data set came from inside the installed package, not from this checkout.
    assert "site-packages/sandbox/_bundled" in results["dataset"]["path"]
    assert sorted(results["scores"]["attack"]) == _sample_ids("attack")
    assert sorted(results["scores"]["targeted_attack"]) == _sample_ids("targeted_attack")
    assert sorted(results["scores"]["defense"]) == _sample_ids("defense")
    assert results["n_images"] == 1000 and not results["left_out"]
    assert all(f["pieces_failed"] == 0 and f["failed_images"] == 0 for f in results["failures"].values())
    # A white-box attack beats doing nothing against the model it attacks.
    assert (
        results["matrices"]["correct_on_attacks"]["fgsm"]["base_torch"]
        < (results["matrices"]["correct_on_attacks"]["noop"]["base_torch"])
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["epsilon"] == [16] and manifest["settings"]["limits"]["pids"] == 256


def test_the_wheel_ships_the_nips17_csvs_and_fetch_names_them_from_the_install(tmp_path):
    # No Docker needed: the wheel alone, installed in a fresh venv, and `sandbox dataset fetch` called with the
    # path the docs give (dataset/nips17/dev_dataset.csv) from a folder that has no such file.
    import zipfile

    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(REPO)], check=True, capture_output=True
    )
    wheel = next(dist.glob("adversarial_sandbox-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("dev_dataset.csv", "final_dataset.csv", "README.md"):
        shipped = f"sandbox/_bundled/dataset/nips17/{name}"
        assert shipped in names, shipped
        assert zipfile.ZipFile(wheel).read(shipped) == (REPO / "dataset" / "nips17" / name).read_bytes()

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], check=True)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    dead_proxy = "http://127.0.0.1:9"  # nothing listens: every download fails at once, none leaves this machine
    env = {"PATH": "/usr/bin:/bin", "HTTP_PROXY": dead_proxy, "HTTPS_PROXY": dead_proxy, "NO_PROXY": ""}
    command = [str(env_dir / "bin" / "sandbox"), "dataset", "fetch", "dataset/nips17/dev_dataset.csv", "out"]
    result = subprocess.run(
        [*command, "--limit", "2", "--retries", "0"], cwd=workdir, env=env, capture_output=True, text=True
    )
    # It read the shipped CSV (two rows, their ids in the failure list) and tried to fetch them.
    assert result.returncode == 1, result.stderr
    assert "site-packages/sandbox/_bundled/dataset/nips17/dev_dataset.csv: none of the 2 images" in result.stderr
    failures = (workdir / "out" / "fetch_failures.csv").read_text().splitlines()
    with (REPO / "dataset" / "nips17" / "dev_dataset.csv").open() as f:
        first_two = [line.split(",")[0] for line in f.read().splitlines()[1:3]]
    assert [line.split(",")[0] for line in failures[1:]] == first_two
