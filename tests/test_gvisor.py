"""gVisor for real: every shipped sample under runsc gives exactly the scores it gives under runc.

CI registers runsc first (`scripts/install-docker.sh --gvisor`); on a developer machine without it the test
skips, and under CI=true it fails.
"""

from __future__ import annotations

import json

import pytest

from sandbox import RunOptions, run_competition
from sandbox.bundled import default_dataset_dir
from sandbox.dataset import subset_dataset
from sandbox.errors import RuntimeUnavailable
from sandbox.runtime import make_runtime
from tests.conftest import IN_CI
from tests.test_competition import read_csv

pytestmark = pytest.mark.usefixtures("docker_ready", "tensorflow_image")


@pytest.fixture(scope="module")
def gvisor() -> None:
    try:
        make_runtime("docker", "gvisor")
    except RuntimeUnavailable as exc:
        if IN_CI:
            pytest.fail(f"CI=true and {exc}; .ci/run runs scripts/install-docker.sh --gvisor")
        pytest.skip(f"{exc}; run scripts/install-docker.sh --gvisor")


@pytest.mark.usefixtures("gvisor")
def test_the_shipped_competition_scores_the_same_under_gvisor(tmp_path):
    dataset = subset_dataset(default_dataset_dir(), tmp_path / "data", 200)
    results = {}
    for isolation in ("runc", "gvisor"):
        out = tmp_path / isolation
        result = run_competition(RunOptions(dataset=dataset, out=out, isolation=isolation))
        assert result.complete, result.results["failures"]
        results[isolation] = (result.results, read_csv(out / "all_classification.csv"))

    runc, gvisor = results["runc"], results["gvisor"]
    assert gvisor[0]["scores"] == runc[0]["scores"]
    assert gvisor[0]["matrices"] == runc[0]["matrices"]
    assert gvisor[1] == runc[1]
    assert gvisor[0]["settings"]["isolation"] == "docker/runsc"
    assert {f["isolation"] for f in gvisor[0]["failures"].values()} == {"docker/runsc"}


@pytest.mark.usefixtures("gvisor")
def test_validate_checks_under_gvisor_when_asked(tmp_path):
    from click.testing import CliRunner

    from sandbox.bundled import sample_dirs
    from sandbox.cli import main

    sample = sample_dirs("attack")[0] / "fgsm"
    result = CliRunner().invoke(main, ["validate", str(sample), "--isolation", "gvisor", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["trial"]["isolation"] == "docker/runsc"
