"""The ImageNet samples (sample_attacks_imagenet/, sample_defenses_imagenet/) in their real container, on 4 real
299x299 images, with weights loaded from a mounted weights folder through the same code as the real weights.

The real weights cannot be downloaded here, so the folder holds randomly initialised weights (seeded) in the same
safetensors format, written by the samples' own `imagenet_io.py random-weights`. Also: the label convention
(a model whose top-1 is known gives that class + 1 on a NIPS 2017 set, the class itself on a 0..999 set), the
weights mount (read-only, present only when asked for) and the one line a missing weights file gives.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import secrets
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sandbox.competition import RunOptions, run_competition
from sandbox.dataset import load_dataset
from sandbox.from_folder import FolderOptions, build_from_folder
from sandbox.image_names import image_tag
from sandbox.pieces import RunContext, execute_defense
from sandbox.runtime import Limits
from sandbox.runtime.docker import DockerRuntime
from sandbox.store import RunStore
from sandbox.submission import Submission, admit
from tests.submissions import BASE, write_submission

REPO = Path(__file__).resolve().parent.parent
ATTACKS = REPO / "sample_attacks_imagenet"
TARGETED = REPO / "sample_targeted_attacks_imagenet"
DEFENSES = REPO / "sample_defenses_imagenet"
SAMPLES = sorted([*ATTACKS.iterdir(), *TARGETED.iterdir(), *DEFENSES.iterdir()])
MODELS = ("inception_v3.tf_in1k", "inception_v3.tf_adv_in1k", "inception_resnet_v2.tf_ens_adv_in1k")
TORCH = image_tag("torch-cpu")
GPU_IMAGE = image_tag("torch-gpu")
LIMITS = Limits(time_per_100_images=6000, min_time=300, cpus=1)


def _submission(folder: Path) -> Submission:
    admission = admit(folder)
    assert admission.submission is not None, admission.findings
    return admission.submission


def _in_torch_container(code: Path, out: Path, command: list[str]) -> None:
    """Runs a sample's own code (timm is in the image, not on the host) with `out` writable."""
    import docker

    out.mkdir(parents=True, exist_ok=True)
    docker.from_env().containers.run(
        TORCH,
        command,
        working_dir="/code",
        volumes={str(code): {"bind": "/code", "mode": "ro"}, str(out): {"bind": "/out", "mode": "rw"}},
        environment={"PYTHONDONTWRITEBYTECODE": "1", "HOME": "/tmp"},
        network_mode="none",
        remove=True,
    )


@pytest.fixture(scope="module")
def random_weights(docker_ready, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("weights")
    folder.chmod(0o755)  # read by the submissions' user
    _in_torch_container(DEFENSES / "inception_v3", folder, ["python3", "imagenet_io.py", "random-weights", "/out"])
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{m}.safetensors" for m in MODELS)
    return folder


def _source_images(folder: Path, n: int) -> list[tuple[str, int, int]]:
    """n photos-to-be of different sizes and formats: (file, TrueLabel, TargetClass) in TF-Slim's 1..1000."""
    rng = np.random.default_rng(13)
    folder.mkdir(parents=True)
    rows = []
    for i in range(n):
        height, width = 240 + 40 * i, 320 + 20 * i
        yy, xx = np.mgrid[0:height, 0:width]
        pixels = np.stack([xx * 255 // width, yy * 255 // height, rng.integers(0, 256, (height, width))], axis=-1)
        name = f"photo_{i}.{'jpg' if i % 2 else 'png'}"
        Image.fromarray(pixels.astype(np.uint8)).save(folder / name)
        rows.append((name, int(rng.integers(1, 1001)), int(rng.integers(1, 1001))))
    return rows


@pytest.fixture(scope="module")
def imagenet_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 images, 299x299 RGB, TF-Slim labels, built as a user would: `sandbox dataset from-folder`."""
    root = tmp_path_factory.mktemp("imagenet")
    rows = _source_images(root / "photos", 4)
    with (root / "labels.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("file", "TrueLabel", "TargetClass"), *rows])
    options = FolderOptions(num_classes=1001, label_convention="tf-slim-1001")
    return build_from_folder(root / "photos", root / "labels.csv", root / "dataset", options).dataset.root


@pytest.mark.parametrize("folder", SAMPLES, ids=lambda p: p.name)
def test_imagenet_sample_folder_is_a_complete_submission(folder: Path) -> None:
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["name"] == folder.name and metadata["authors"] == "adversarial-sandbox samples"
    assert metadata["input_size"] == [299, 299]
    assert (metadata["container"], metadata["container_gpu"]) == (TORCH, GPU_IMAGE)
    assert (metadata.get("source_model") == "inception_v3.tf_in1k") == (metadata["type"] != "defense")
    entry = folder / metadata["entry_point"]
    assert os.access(entry, os.X_OK) and "export PYTHONDONTWRITEBYTECODE=1" in entry.read_text()
    assert "Source model" in (folder / "README.md").read_text() or metadata["type"] == "defense"
    assert not [p for p in folder.iterdir() if p.suffix in (".pt", ".safetensors", ".bin")], "weights are mounted"
    submission = _submission(folder)
    assert submission.image(False) == TORCH and submission.image(True) == GPU_IMAGE


def test_every_imagenet_sample_carries_the_same_shared_code() -> None:
    copies = {(folder / "imagenet_io.py").read_bytes() for folder in SAMPLES}
    assert len(copies) == 1, (
        "imagenet_io.py differs between samples: edit sample_defenses_imagenet/inception_v3/imagenet_io.py, then "
        "`python3 training/train_all.py --sync-only`"
    )


def test_targets_are_converted_to_timm_classes_by_the_data_sets_offset(tmp_path: Path) -> None:
    pytest.importorskip("torch")  # imagenet_io imports it; timm is not needed for this part
    spec = importlib.util.spec_from_file_location(
        "imagenet_io", TARGETED / "iter_target_class_inc_v3" / "imagenet_io.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "target_class.csv").write_text("a.png,0\nb.png,1\nc.png,1000\n")
    assert module.load_targets(tmp_path / "target_class.csv", 1) == {"b.png": 0, "c.png": 999}
    assert module.load_targets(tmp_path / "target_class.csv", 0) == {"a.png": 0, "b.png": 1}


def test_dataset_states_its_label_convention(imagenet_dataset: Path) -> None:
    dataset = load_dataset(imagenet_dataset)
    assert dataset.label_convention == "tf-slim-1001" and dataset.num_classes == 1001
    assert dataset.size == (299, 299) and dataset.mode == "RGB"


def test_imagenet_samples_run_in_their_containers_and_meet_the_contract(
    random_weights: Path, imagenet_dataset: Path, tmp_path: Path
) -> None:
    """Every attack and defense, one small run: every image written within epsilon, every label in 1..1000."""
    options = RunOptions(
        attacks=(ATTACKS,),
        targeted_attacks=(TARGETED,),
        defenses=(DEFENSES,),
        dataset=imagenet_dataset,
        out=tmp_path / "run",
        epsilon=(8,),
        jobs=2,
        limits=LIMITS,
        weights=random_weights,
    )
    result = run_competition(options)
    assert not result.left_out, result.left_out
    store = RunStore(tmp_path / "run")
    pieces = store.pieces()
    assert {p.submission_id for p in pieces} == {folder.name for folder in SAMPLES}
    assert all(p.status == "ok" for p in pieces), [
        (p.piece_id, p.stderr_tail[-500:]) for p in pieces if p.status != "ok"
    ]
    for piece in pieces:
        assert piece.failed_images == 0 and piece.clipped_pixels == 0 and piece.bad_lines == 0, piece.piece_id
    labels = [label for label in store.labels().values() if label is not None]
    assert labels and all(1 <= label <= 1000 for label in labels)
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["weights"]["path"] == str(random_weights.resolve())
    for model in MODELS:
        data = (random_weights / f"{model}.safetensors").read_bytes()
        assert manifest["weights"]["sha256"][f"{model}.safetensors"] == hashlib.sha256(data).hexdigest()


def _defense_outcome(defense: Path, dataset_dir: Path, weights: Path | None, tmp_path: Path, n: int = 2):
    """One defense piece on the first `n` clean images, through the run's own piece code."""
    dataset = load_dataset(dataset_dir)
    runtime = DockerRuntime()
    run_dir = tmp_path / f"ctx-{secrets.token_hex(4)}"
    run_dir.mkdir()
    ctx = RunContext("imagenet-test", run_dir, secrets.token_hex(8), LIMITS, dataset, runtime, weights=weights)
    inputs = {r.image_id: dataset.image_path(r.image_id) for r in dataset.records[:n]}
    try:
        outcome, by_name, _ = execute_defense("imagenet/defense", 0, _submission(defense), ctx, inputs)
    finally:
        runtime.cleanup_run("imagenet-test")
        runtime.close()
    return outcome, by_name


def test_top1_maps_to_the_data_sets_label_convention(
    random_weights: Path, imagenet_dataset: Path, tmp_path: Path
) -> None:
    """Weights whose classifier always picks timm class 41 (0..999): a NIPS 2017 set gets 42, a 0..999 set 41."""
    crafted = tmp_path / "crafted"
    script = (
        "import torch; from safetensors.torch import load_file, save_file; "
        "s = load_file('/weights/inception_v3.tf_in1k.safetensors'); "
        "s['fc.weight'].zero_(); s['fc.bias'].zero_(); s['fc.bias'][41] = 10.0; "
        "save_file(s, '/out/inception_v3.tf_in1k.safetensors')"
    )
    import docker

    crafted.mkdir(mode=0o755)
    docker.from_env().containers.run(
        TORCH,
        ["python3", "-c", script],
        volumes={str(random_weights): {"bind": "/weights", "mode": "ro"}, str(crafted): {"bind": "/out", "mode": "rw"}},
        network_mode="none",
        remove=True,
    )
    (crafted / "inception_v3.tf_in1k.safetensors").chmod(0o644)
    zero_based = tmp_path / "zero_based"
    zero_based.mkdir()
    for entry in imagenet_dataset.iterdir():
        (zero_based / entry.name).symlink_to(entry) if entry.name != "dataset.json" else None
    info = json.loads((imagenet_dataset / "dataset.json").read_text())
    (zero_based / "dataset.json").write_text(json.dumps({**info, "label_convention": "0-999"}))
    for dataset_dir, expected in ((imagenet_dataset, 42), (zero_based, 41)):
        outcome, by_name = _defense_outcome(DEFENSES / "inception_v3", dataset_dir, crafted, tmp_path)
        assert outcome.exit_code == 0, outcome.stderr_tail[-1000:]
        lines = outcome.files["result.csv"].decode().split()
        assert sorted(line.split(",")[0] for line in lines) == sorted(by_name)
        assert {line.split(",")[1] for line in lines} == {str(expected)}, dataset_dir.name


def test_a_missing_weights_file_is_one_line_naming_it_and_the_fix(imagenet_dataset: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty_weights"
    empty.mkdir(mode=0o755)
    for weights, expected in (
        (empty, "/weights/inception_resnet_v2.tf_ens_adv_in1k.safetensors missing"),
        (None, "SANDBOX_WEIGHTS is not set"),
    ):
        outcome, _ = _defense_outcome(DEFENSES / "ens_adv_inception_resnet_v2", imagenet_dataset, weights, tmp_path)
        assert outcome.exit_code == 1
        lines = outcome.stderr_tail.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "sandbox weights fetch DIR" in lines[0], lines


WEIGHTS_PROBE = """#!/bin/sh
echo "env=$SANDBOX_WEIGHTS"
ls /weights >/dev/null 2>&1 && echo "mounted" || echo "absent"
touch /weights/planted 2>/dev/null && echo "WROTE-NEW" || echo "denied-new"
echo x >> /weights/inception_v3.tf_in1k.safetensors 2>/dev/null && echo "WROTE-OLD" || echo "denied-old"
rm -f /weights/inception_v3.tf_in1k.safetensors 2>/dev/null; test -e /weights/inception_v3.tf_in1k.safetensors \
  && echo "kept" || echo "REMOVED"
for f in "$1"/*.png; do echo "$(basename "$f"),1"; done > "$2"
"""


def test_the_weights_mount_is_read_only_and_absent_unless_asked_for(
    docker_ready, imagenet_dataset: Path, tmp_path: Path
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir(mode=0o755)
    target = weights / "inception_v3.tf_in1k.safetensors"
    target.write_bytes(b"public weights")
    target.chmod(0o666)  # even a file anyone may write stays unwritable through the mount
    probe = write_submission(tmp_path / "subs", "probe", "defense", WEIGHTS_PROBE, image=BASE)
    outcome, _ = _defense_outcome(probe, imagenet_dataset, weights, tmp_path)
    assert outcome.exit_code == 0, outcome.stderr_tail
    assert outcome.stdout_tail.split() == ["env=/weights", "mounted", "denied-new", "denied-old", "kept"]
    assert sorted(p.name for p in weights.iterdir()) == [target.name] and target.read_bytes() == b"public weights"
    outcome, _ = _defense_outcome(probe, imagenet_dataset, None, tmp_path)
    assert outcome.stdout_tail.split()[:2] == ["env=", "absent"]


def test_validate_runs_a_trial_with_the_weights_mounted(random_weights: Path, imagenet_dataset: Path) -> None:
    from sandbox.validate import validate_submission

    folder = DEFENSES / "adv_inception_v3"
    report = validate_submission(folder, imagenet_dataset, LIMITS, images=2, weights=random_weights)
    assert report.passed(), [(f.where, f.message) for f in report.findings]
    without = validate_submission(folder, imagenet_dataset, LIMITS, images=2)
    assert not without.passed()
    assert "SANDBOX_WEIGHTS is not set" in without.trial["stderr_tail"], without.trial
