"""benchmarks/paper_findings.py on a small slice, through real containers: it builds one submission per white-box
(attack, defense) pair and per black-box attack, runs one competition per epsilon, and writes the table.
The full 1000-image run is a benchmark (docs/paper_findings.md), not a test."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("docker_ready")

REPO = Path(__file__).resolve().parent.parent
N_IMAGES = 100


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("paper_findings", REPO / "benchmarks" / "paper_findings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_paper_findings_writes_the_table_on_a_small_slice(tmp_path, capsys):
    from tests.test_samples import _need_tf_image  # fgsm_keras is one of the black-box attacks

    _need_tf_image()
    benchmark = _load_benchmark()
    out = tmp_path / "findings"
    benchmark.main(["--images", str(N_IMAGES), "--out", str(out)])

    findings = json.loads((out / "findings.json").read_text())
    markdown = (out / "findings.md").read_text()
    assert findings["n_images"] == N_IMAGES and findings["epsilons"] == [16, 32]
    columns = ["Clean", "Step-LL", "R+Step-LL", "FGSM", "I-FGSM", "Max. Black-Box"]
    assert findings["columns"] == columns
    for eps in ("16", "32"):
        table = findings["error_percent"][eps]
        assert sorted(table) == ["adv_torch", "base_torch", "ens_adv_torch"]
        for defense, row in table.items():
            assert list(row) == columns, defense
            assert all(0.0 <= row[c] <= 100.0 for c in columns)
            assert row["Clean"] < 25.0, "every defense classifies most clean images correctly"
            black_box = findings["black_box_error_percent"][eps]
            assert row["Max. Black-Box"] == max(errors[defense] for errors in black_box.values())
            assert f"| {eps} | {defense} |" in markdown
        # A white-box attack on the undefended model beats doing nothing.
        assert table["base_torch"]["FGSM"] > table["base_torch"]["Clean"]
        assert set(findings["black_box_error_percent"][eps]) == {
            "step_ll__from__holdout_b",
            "rand_step_ll__from__holdout_b",
            "fgsm__from__holdout_b",
            "iter_fgsm__from__holdout_b",
            "fgsm_keras__from__base_keras",
        }
    assert len(findings["findings"]) == 4 and all(isinstance(f["holds"], bool) for f in findings["findings"])
    assert "## Findings" in markdown and markdown in capsys.readouterr().out
    # One submission per white-box (attack, defense) pair, each with that defense's weights.
    run = json.loads((out / "run_eps16" / "results.json").read_text())
    attack_ids = set(run["scores"]["attack"])
    assert {"fgsm__vs__adv_torch", "step_ll__vs__ens_adv_torch", "iter_fgsm__vs__base_torch"} <= attack_ids
    sources = {s["id"]: s["source_model"] for s in run["submissions"]["attack"]}
    assert sources["rand_step_ll__vs__adv_torch"] == "adv_torch" and sources["fgsm__from__holdout_b"] == "holdout_b"
