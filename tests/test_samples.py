"""The shipped samples: each one runs in its container and meets the folder contract; the attacks' math, on a tiny
model on the host; the shipped weights reach their recorded clean accuracy through the sandbox.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from sandbox import Limits, RunOptions, run_competition
from sandbox.bundled import default_dataset_dir
from sandbox.image_names import image_tag
from tests.conftest import IN_CI, make_small_dataset

REPO = Path(__file__).resolve().parent.parent
ATTACKS = REPO / "sample_attacks"
TARGETED = REPO / "sample_targeted_attacks"
DEFENSES = REPO / "sample_defenses"
TRAINING_LOG = REPO / "training" / "training_log.json"
TF_IMAGE = image_tag("tensorflow-cpu")
# White-box samples whose model is base_torch's, and the black-box ones with a holdout's (checked identical).
BASE_TORCH_COPIES = ("fgsm", "step_ll", "rand_step_ll", "iter_fgsm")
# The momentum iterative transfer attacks (momentum.py), each computed on holdout models only.
MOMENTUM_ATTACKS = ("mi_fgsm", "di_mi_fgsm", "ti_mi_fgsm", "ens_mi_fgsm", "mi_fgsm_adv_holdout")


def _samples(parent: Path) -> list[Path]:
    return sorted(p for p in parent.iterdir() if (p / "metadata.json").is_file())


def _need_host_torch():
    if IN_CI:
        import torch  # CI installs it: a skipped math test there would hide a broken attack
    else:
        torch = pytest.importorskip("torch")
    return torch


def _need_tf_image() -> None:
    import docker

    try:
        docker.from_env(timeout=10).images.get(TF_IMAGE)
    except Exception:
        message = f"image {TF_IMAGE} missing: run `sandbox images build --target tensorflow-cpu`"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


def _source_model(folder: Path) -> str:
    return json.loads((folder / "metadata.json").read_text())["source_model"]


def load_sample_module(folder: Path, file: str = "attack.py") -> ModuleType:
    """Imports a sample's attack.py as the container would run it: its folder first on sys.path."""
    sys.path.insert(0, str(folder))
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in a submission
    try:
        spec = importlib.util.spec_from_file_location(f"sample_{folder.name}_{Path(file).stem}", folder / file)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
        sys.path.remove(str(folder))
        for name in ("model", "sample_io", "momentum"):  # each sample has its own model.py and copies of these
            sys.modules.pop(name, None)
    return module


# --- the folder contract, statically


@pytest.mark.parametrize("folder", [*_samples(ATTACKS), *_samples(TARGETED), *_samples(DEFENSES)], ids=lambda p: p.name)
def test_sample_folder_is_a_complete_submission(folder: Path):
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["name"] == folder.name and metadata["authors"] == "adversarial-sandbox samples"
    assert metadata["container"] in (image_tag("torch-cpu"), TF_IMAGE) and metadata["description"]
    if metadata["type"] != "defense":
        assert metadata["source_model"], "attacks name the model they compute gradients on"
    entry = folder / metadata["entry_point"]
    script = entry.read_text()
    assert os.access(entry, os.X_OK) and script.startswith("#!/bin/sh\n")
    assert "export PYTHONDONTWRITEBYTECODE=1" in script and "exec python3 " in script
    assert (folder / "README.md").is_file()
    for weights in [*folder.glob("*.pt"), *folder.glob("*.h5")]:
        assert weights.stat().st_size < 10 * 2**20, f"{weights}: weights must stay under 10 MB"


def test_attacks_carry_identical_copies_of_their_source_models():
    """training/train_all.py installs the copies; white-box attacks must match the defense they attack."""
    base = DEFENSES / "base_torch"
    white_box_targeted = [f for f in _samples(TARGETED) if _source_model(f) == "base_torch"]
    assert len(white_box_targeted) == 2
    for folder in [*(ATTACKS / name for name in BASE_TORCH_COPIES), *white_box_targeted]:
        for name in ("model.py", "model.pt"):
            assert (folder / name).read_bytes() == (base / name).read_bytes(), f"{folder.name}/{name}"
    for name in ("adv_torch", "ens_adv_torch"):
        assert (DEFENSES / name / "model.py").read_bytes() == (base / "model.py").read_bytes()
    for name in ("model.py", "model.weights.h5"):
        assert (ATTACKS / "fgsm_keras" / name).read_bytes() == (DEFENSES / "base_keras" / name).read_bytes()
    # The black-box samples are the white-box code with the holdout's files: the findings benchmark relies on it.
    for holdout, white_box in (("step_ll_holdout", "step_ll"), ("fgsm_holdout", "fgsm")):
        assert (ATTACKS / holdout / "attack.py").read_bytes() == (ATTACKS / white_box / "attack.py").read_bytes()
        assert (ATTACKS / holdout / "model.pt").read_bytes() == (ATTACKS / "step_ll_holdout" / "model.pt").read_bytes()
    # The momentum attacks compute on holdout models only: holdout_b's files, or holdout_b_adv's (model B too).
    holdout_b = ATTACKS / "step_ll_holdout"
    for folder in [*(ATTACKS / name for name in MOMENTUM_ATTACKS), TARGETED / "mi_target_class"]:
        assert (folder / "model.py").read_bytes() == (holdout_b / "model.py").read_bytes(), folder.name
        expected = "holdout_b_adv" if folder.name == "mi_fgsm_adv_holdout" else "holdout_b"
        assert _source_model(folder).split("+")[0] == expected, folder.name
        weights = (folder / "model.pt").read_bytes()
        assert (weights == (holdout_b / "model.pt").read_bytes()) == (expected == "holdout_b"), folder.name
    assert (ATTACKS / "ens_mi_fgsm" / "holdout_b_adv.pt").read_bytes() == (
        ATTACKS / "mi_fgsm_adv_holdout" / "model.pt"
    ).read_bytes()


# --- the attacks' math, on the host, on a tiny model


@pytest.fixture(scope="module")
def tiny():
    """A linear softmax model on 28x28 images, and a batch of images away from 0 and 255 (nothing clips)."""
    torch = _need_host_torch()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    x = np.random.default_rng(0).integers(40, 216, size=(16, 28, 28), dtype=np.uint8)
    return torch, model, x


def _probabilities(torch, model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)), 1).numpy()


def test_fgsm_moves_every_pixel_by_exactly_epsilon_and_raises_the_loss(tiny):
    torch, model, x = tiny
    for sample in ("fgsm", "fgsm_holdout"):
        x_adv = load_sample_module(ATTACKS / sample).fgsm(model, x, 16)
        assert np.all(np.abs(x_adv.astype(int) - x) == 16)
        p, p_adv = _probabilities(torch, model, x), _probabilities(torch, model, x_adv)
        predicted = p.argmax(1)
        assert np.all(p_adv[np.arange(len(x)), predicted] < p[np.arange(len(x)), predicted])
    # Where x + eps leaves [0, 255] the pixel is clipped, never wrapped.
    edges = np.zeros_like(x)
    edges[:, ::2] = 255
    x_adv = load_sample_module(ATTACKS / "fgsm").fgsm(model, edges, 16)
    assert np.all(np.abs(x_adv.astype(int) - edges) <= 16)


def test_step_ll_raises_the_probability_of_the_least_likely_class(tiny):
    torch, model, x = tiny
    for sample in ("step_ll", "step_ll_holdout"):
        x_adv = load_sample_module(ATTACKS / sample).step_ll(model, x, 4)
        assert np.all(np.abs(x_adv.astype(int) - x) == 4)
        p, p_adv = _probabilities(torch, model, x), _probabilities(torch, model, x_adv)
        least_likely = p.argmin(1)
        assert np.all(p_adv[np.arange(len(x)), least_likely] > p[np.arange(len(x)), least_likely])


def test_rand_step_ll_stays_in_the_ball_and_is_seeded(tiny):
    torch, model, x = tiny
    rand_step_ll = load_sample_module(ATTACKS / "rand_step_ll").rand_step_ll

    a, b, c = rand_step_ll(model, x, 16, 1), rand_step_ll(model, x, 16, 1), rand_step_ll(model, x, 16, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # An image's noise depends on the seed and its pixels only: not on its batch, its position or its file name
    # (names are opaque and differ from run to run).
    assert np.array_equal(rand_step_ll(model, x[::-1], 16, 1), a[::-1])
    assert np.array_equal(rand_step_ll(model, x[:3], 16, 1), a[:3])
    delta = a.astype(int) - x
    # alpha = eps/2 random, then eps - alpha along the gradient: every pixel ends at 0 or +-eps from x.
    assert np.all(np.isin(delta, (-16, 0, 16)))
    # alpha = eps leaves no gradient step: pure random sign noise of size eps.
    noise_only = rand_step_ll(model, x, 16, 1, alpha=16)
    assert np.all(np.isin(noise_only.astype(int) - x, (-16, 16)))


def test_iterative_attacks_stay_in_the_ball_and_beat_one_step(tiny):
    torch, model, x = tiny
    iter_fgsm = load_sample_module(ATTACKS / "iter_fgsm").iter_fgsm
    p = _probabilities(torch, model, x)
    predicted = p.argmax(1)
    edges = x.copy()
    edges[:, :4] = 3  # near 0: the projection into [0, 255] matters
    for images in (x, edges):
        x_adv = iter_fgsm(model, images, 10, k=10)
        assert np.abs(x_adv.astype(int) - images).max() <= 10 and x_adv.dtype == np.uint8
    x_adv = iter_fgsm(model, x, 10)
    p_adv = _probabilities(torch, model, x_adv)
    assert np.all(p_adv[np.arange(len(x)), predicted] < p[np.arange(len(x)), predicted])
    iter_ll = iter_fgsm(model, x, 10, least_likely=True)
    least_likely = p.argmin(1)
    assert np.all(
        _probabilities(torch, model, iter_ll)[np.arange(len(x)), least_likely] > p[np.arange(len(x)), least_likely]
    )

    iter_target_class = load_sample_module(TARGETED / "iter_target_class").iter_target_class
    target = (predicted + 1) % 10
    x_adv = iter_target_class(model, x, target.astype(np.int64), 10)
    assert np.abs(x_adv.astype(int) - x).max() <= 10
    assert np.all(_probabilities(torch, model, x_adv)[np.arange(len(x)), target] > p[np.arange(len(x)), target])


def test_mi_fgsm_without_momentum_is_i_fgsm_and_every_variant_stays_in_the_ball(tiny):
    torch, model, x = tiny
    momentum = load_sample_module(ATTACKS / "mi_fgsm", "momentum.py")
    iter_fgsm = load_sample_module(ATTACKS / "iter_fgsm").iter_fgsm
    # decay 0: each step is the sign of this step's gradient, i.e. I-FGSM.
    assert np.array_equal(momentum.mi_fgsm(model, x, 10, decay=0.0), iter_fgsm(model, x, 10))
    p = _probabilities(torch, model, x)
    predicted = p.argmax(1)
    edges = x.copy()
    edges[:, :4] = 3  # near 0: the projection into [0, 255] matters
    variants = {
        "mi": {},
        "di": {"diversity_prob": 0.5, "min_size": 25, "seed": 1},
        "di always": {"diversity_prob": 1.0, "min_size": 20, "seed": 1},
        "ti": {"kernel_size": 5},
        "di+ti": {"diversity_prob": 0.5, "kernel_size": 5, "seed": 1},
    }
    for name, options in variants.items():
        for images in (x, edges):
            x_adv = momentum.mi_fgsm(model, images, 16, **options)
            assert x_adv.dtype == np.uint8 and x_adv.shape == images.shape
            assert np.abs(x_adv.astype(int) - images).max() <= 16, name
        p_adv = _probabilities(torch, model, momentum.mi_fgsm(model, x, 16, **options))
        assert np.all(p_adv[np.arange(len(x)), predicted] < p[np.arange(len(x)), predicted]), name
    # Targeted: toward y_target.
    target = (predicted + 1) % 10
    x_adv = momentum.mi_fgsm(model, x, 10, y_target=target)
    assert np.abs(x_adv.astype(int) - x).max() <= 10
    assert np.all(_probabilities(torch, model, x_adv)[np.arange(len(x)), target] > p[np.arange(len(x)), target])
    mi_target_class = load_sample_module(TARGETED / "mi_target_class").mi_target_class
    assert np.array_equal(mi_target_class(model, x, target, 10), x_adv)


def test_diverse_inputs_are_seeded_by_the_image_and_the_seed_only(tiny):
    torch, model, x = tiny
    di_mi_fgsm = load_sample_module(ATTACKS / "di_mi_fgsm").di_mi_fgsm
    a, b, c = di_mi_fgsm(model, x, 16, 1), di_mi_fgsm(model, x, 16, 1), di_mi_fgsm(model, x, 16, 2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    # Neither the batch nor the position (file names are opaque and differ from run to run) changes an image's draws.
    assert np.array_equal(di_mi_fgsm(model, x[::-1], 16, 1), a[::-1])
    assert np.array_equal(di_mi_fgsm(model, x[:3], 16, 1), a[:3])
    # The transformation itself: probability 0 is the identity; with probability 1 each image is shrunk to its
    # drawn size s and padded with zeros, so exactly 28 * 28 - s * s pixels are 0 (tiny's pixels are never 0).
    momentum = load_sample_module(ATTACKS / "mi_fgsm", "momentum.py")
    x01 = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    assert torch.equal(momentum.diverse_inputs(x01, momentum.image_generators(x, 1), 0.0, 25), x01)
    shrunk = momentum.diverse_inputs(x01, momentum.image_generators(x, 1), 1.0, 14)
    sizes = []
    for image, rng in zip(shrunk, momentum.image_generators(x, 1), strict=True):
        rng.random()  # the draw that decides whether the image is transformed
        sizes.append(int(rng.integers(14, 29)))
        assert int((image == 0).sum()) == 28 * 28 - sizes[-1] ** 2
    assert min(sizes) < 28


def test_ti_kernel_and_the_ensemble(tiny):
    torch, model, x = tiny
    momentum = load_sample_module(ATTACKS / "mi_fgsm", "momentum.py")
    kernel = momentum.gaussian_kernel(5)
    assert kernel.shape == (1, 1, 5, 5) and float(kernel.sum()) == pytest.approx(1.0)
    assert float(kernel[0, 0, 2, 2]) == float(kernel.max()) and torch.equal(kernel, kernel.flip(-1).transpose(-1, -2))
    ti_mi_fgsm = load_sample_module(ATTACKS / "ti_mi_fgsm").ti_mi_fgsm
    assert np.array_equal(ti_mi_fgsm(model, x, 16), momentum.mi_fgsm(model, x, 16, kernel_size=5))
    # An ensemble of copies of one model is that model; of two models, the mean of their logits.
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10)).eval()
    ens_mi_fgsm = load_sample_module(ATTACKS / "ens_mi_fgsm").ens_mi_fgsm
    assert np.array_equal(ens_mi_fgsm([model, model], x, 16), momentum.mi_fgsm(model, x, 16))
    x01 = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        mean = (model(x01) + other(x01)) / 2
        assert torch.allclose(momentum.LogitEnsemble([model, other])(x01), mean)


def test_the_ensemble_attack_loads_every_source_it_names():
    """Each weights file named in ens_mi_fgsm/attack.py is there and loads into model.py's model."""
    torch = _need_host_torch()
    folder = ATTACKS / "ens_mi_fgsm"
    module = load_sample_module(folder)
    assert module.OTHER_SOURCES == ("holdout_b_adv.pt",)
    model_py = load_sample_module(folder, "model.py")
    weights = [folder / "model.pt", *(folder / name for name in module.OTHER_SOURCES)]
    states = [model_py.load_model(str(path)).state_dict() for path in weights]
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0]), "two different models"


# --- every sample in its container


def _run_samples(tmp_path: Path, dataset: Path, attacks: Path | None, targeted: Path | None, **options) -> dict:
    kinds = {"attacks": attacks, "targeted_attacks": targeted}
    empty = tmp_path / "empty"
    empty.mkdir(exist_ok=True)
    result = run_competition(
        RunOptions(
            **{k: (v or empty,) for k, v in kinds.items()},
            defenses=(DEFENSES,),
            dataset=dataset,
            out=tmp_path / "run",
            jobs=2,
            limits=Limits(cpus=1.0),
            build_images=False,
            **options,
        )
    )
    assert not result.left_out, [lo.error for lo in result.left_out]
    return result.results


@pytest.mark.usefixtures("docker_ready")
def test_every_sample_runs_in_its_container_and_meets_the_contract(tmp_path):
    _need_tf_image()
    dataset = make_small_dataset(tmp_path / "data20", 20)
    results = _run_samples(tmp_path, dataset, ATTACKS, TARGETED, epsilon=(16,))
    ids = {p.name for parent in (ATTACKS, TARGETED, DEFENSES) for p in _samples(parent)}
    assert set(results["failures"]) == ids
    for sub_id, failures in results["failures"].items():
        summary = {k: failures[k] for k in ("pieces_failed", "failed_images", "clipped_pixels", "bad_result_lines")}
        # clipped_pixels == 0: every attack keeps within epsilon by itself, before the sandbox clips.
        assert summary == dict.fromkeys(summary, 0), (sub_id, summary, failures["log_tail"][-2000:])
        assert failures["skipped_output_files"] == 0, sub_id
    correct = results["matrices"]["correct_on_attacks"]
    for attack in ("fgsm", "step_ll", "rand_step_ll", "iter_fgsm", *MOMENTUM_ATTACKS):
        assert correct[attack]["base_torch"] < correct["noop"]["base_torch"], attack
    assert correct["fgsm_keras"]["base_keras"] < correct["noop"]["base_keras"]
    hits = results["matrices"]["hit_target_class"]
    assert hits["iter_target_class"]["base_torch"] > hits["step_target_class"]["base_torch"] / 2


@pytest.mark.usefixtures("docker_ready")
def test_shipped_weights_reach_their_recorded_clean_accuracy(tmp_path):
    """noop against every defense on the whole shipped data set: each defense's clean accuracy, through the sandbox,
    is the one training/train_all.py recorded for dataset/fashion_mnist_1k."""
    _need_tf_image()
    attacks = tmp_path / "attacks"
    attacks.mkdir()
    shutil.copytree(ATTACKS / "noop", attacks / "noop")
    results = _run_samples(tmp_path, default_dataset_dir(), attacks, None, batch_size=1000)
    record = json.loads(TRAINING_LOG.read_text())
    correct = results["matrices"]["correct_on_attacks"]["noop"]
    assert set(correct) == {p.name for p in _samples(DEFENSES)}
    for defense, count in correct.items():
        measured = count / results["n_images"]
        assert measured == pytest.approx(record[defense]["dataset_1k_accuracy"], abs=0.002), defense
    assert correct["base_torch"] >= 880 and correct["base_keras"] >= 880
