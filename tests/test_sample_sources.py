"""The sample folders' shared files are copies of one source each, byte for byte. No Docker, no torch.

A submission folder is all its container sees, so code several samples run is copied into each of them; the
sources and their copies are listed in training/sample_models.py, and `python3 training/train_all.py --sync-only`
rewrites the copies. These tests fail when a copy drifts from its source, whichever side was edited.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
TRAINING = REPO / "training"
ATTACKS = REPO / "sample_attacks"
TARGETED = REPO / "sample_targeted_attacks"
DEFENSES = REPO / "sample_defenses"
SAMPLE_IO = TRAINING / "sample_io.py"
SYNC = "copies are written from their sources by `python3 training/train_all.py --sync-only` (edit the source)"


def _load_sample_models() -> ModuleType:
    """training/sample_models.py by path (it is not a package module); it imports neither torch nor TensorFlow."""
    if "sample_models" in sys.modules:  # imported already, by a test that puts training/ on sys.path
        return sys.modules["sample_models"]
    spec = importlib.util.spec_from_file_location("sample_models", TRAINING / "sample_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sample_models"] = module  # dataclasses look their module up while it loads
    writes_bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = writes_bytecode
    return module


sample_models = _load_sample_models()


def _samples() -> list[Path]:
    return sorted(p.parent for parent in (ATTACKS, TARGETED, DEFENSES) for p in parent.glob("*/metadata.json"))


def _rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def _assert_same(source: Path, copy: Path) -> None:
    assert copy.is_file(), f"{_rel(copy)} is missing: {SYNC}"
    assert copy.read_bytes() == source.read_bytes(), f"{_rel(copy)} differs from {_rel(source)}: {SYNC}"


@pytest.mark.parametrize(
    ("source", "copy"), sample_models.shared_files(), ids=lambda p: _rel(p) if isinstance(p, Path) else str(p)
)
def test_every_copy_is_identical_to_its_source(source: Path, copy: Path):
    assert source.is_file(), _rel(source)
    _assert_same(source, copy)


def test_every_sample_that_imports_sample_io_carries_the_copy():
    """Found from the code, not from the list in sample_models.py: a sample added without its copy fails here."""
    listed = {copy for source, copy in sample_models.shared_files() if source == SAMPLE_IO}
    users = [
        folder
        for folder in _samples()
        if any("from sample_io import" in py.read_text() for py in folder.glob("*.py") if py.name != "sample_io.py")
    ]
    assert users, "the torch samples import sample_io"
    for folder in users:
        assert folder / "sample_io.py" in listed, f"{_rel(folder)} imports sample_io but is not in SHARED_CODE"
        _assert_same(SAMPLE_IO, folder / "sample_io.py")
    # And no stale copy where nothing imports it.
    for copy in sorted(p for folder in _samples() for p in folder.glob("sample_io.py")):
        assert copy.parent in users, f"{_rel(copy)}: nothing in its folder imports it"
        _assert_same(SAMPLE_IO, copy)


def test_each_recipe_folder_carries_its_model_py():
    pairs = set(sample_models.shared_files())
    for recipe in sample_models.RECIPES.values():
        for folder in recipe.folders:
            assert folder.is_dir(), _rel(folder)
            if recipe.architecture.resolve() != (folder / "model.py").resolve():
                assert (recipe.architecture, folder / "model.py") in pairs
            _assert_same(recipe.architecture, folder / "model.py")


def test_the_holdout_samples_carry_model_b_from_training_models():
    model_b = TRAINING / "models" / "model_b.py"
    holdouts = ("fgsm_holdout", "step_ll_holdout", "mi_fgsm", "di_mi_fgsm", "ti_mi_fgsm", "ens_mi_fgsm")
    for folder in [*(ATTACKS / name for name in (*holdouts, "mi_fgsm_adv_holdout")), TARGETED / "mi_target_class"]:
        _assert_same(model_b, folder / "model.py")
    assert sample_models.RECIPES["holdout_b"].architecture == model_b
    assert sample_models.RECIPES["holdout_b_adv"].architecture == model_b


def test_the_ensemble_attack_carries_each_source_it_loads():
    """ens_mi_fgsm: holdout_b's weights as model.py's model.pt, holdout_b_adv's as holdout_b_adv.pt."""
    folder = ATTACKS / "ens_mi_fgsm"
    assert sample_models.ENSEMBLE_ATTACK == folder
    _assert_same(ATTACKS / "step_ll_holdout" / "model.pt", folder / "model.pt")
    _assert_same(ATTACKS / "mi_fgsm_adv_holdout" / "model.pt", folder / "holdout_b_adv.pt")
    assert '"holdout_b_adv.pt"' in (folder / "attack.py").read_text()
    assert sorted(p.name for p in folder.glob("*.pt")) == ["holdout_b_adv.pt", "model.pt"]


def test_every_sample_that_imports_momentum_carries_the_copy():
    """Found from the code: the momentum iterative attacks share sample_attacks/mi_fgsm/momentum.py."""
    source = ATTACKS / "mi_fgsm" / "momentum.py"
    assert sample_models.MOMENTUM == source
    users = [
        folder
        for folder in _samples()
        if any("from momentum import" in py.read_text() for py in folder.glob("*.py") if py.name != "momentum.py")
    ]
    assert len(users) == 6, [_rel(u) for u in users]
    for folder in users:
        _assert_same(source, folder / "momentum.py")
    for copy in sorted(p for folder in _samples() for p in folder.glob("momentum.py")):
        assert copy.parent in users, f"{_rel(copy)}: nothing in its folder imports it"


def test_the_torch_defenses_share_one_defense_py():
    base = DEFENSES / "base_torch" / "defense.py"
    assert sample_models.TORCH_DEFENSE == base
    for name in ("adv_torch", "ens_adv_torch"):
        _assert_same(base, DEFENSES / name / "defense.py")


def test_the_holdout_attacks_run_the_white_box_code():
    pairs = (("fgsm_holdout", "fgsm"), ("step_ll_holdout", "step_ll"), ("mi_fgsm_adv_holdout", "mi_fgsm"))
    for holdout, white_box in pairs:
        _assert_same(ATTACKS / white_box / "attack.py", ATTACKS / holdout / "attack.py")
