"""Every model the samples ship, how it is trained, which folders get its model.py and weights, and the code that
several samples share.

A model lives in one or more folders that each hold its `model.py` (with `load_model(path)`) and weights file:
the defense that is the model, and every attack that computes gradients on it (submissions are self-contained: a
folder is all its container sees). Shared code is written once, too (`SHARED_CODE`), and copied into each folder
that runs it. `sync_samples` writes every copy from its source; needs neither torch nor TensorFlow.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTACKS = REPO_ROOT / "sample_attacks"
TARGETED = REPO_ROOT / "sample_targeted_attacks"
DEFENSES = REPO_ROOT / "sample_defenses"
MODEL_A = DEFENSES / "base_torch" / "model.py"
# The command line, threads and seed, PNG reading and batch loop of every torch sample (attacks and defenses).
SAMPLE_IO = REPO_ROOT / "training" / "sample_io.py"
# The torch defenses differ only in their weights: one defense.py for all three.
TORCH_DEFENSE = DEFENSES / "base_torch" / "defense.py"


@dataclass
class TrainSettings:
    """How a model trains: torch_training.train reads these, keras_training.py gets them on its command line."""

    epochs: int = 12
    batch_size: int = 128
    learning_rate: float = 1e-3
    seed: int = 0
    threads: int = 2


@dataclass(frozen=True)
class Adversarial:
    """Adversarial training settings; `static_models` (names of other models) makes it ensemble adversarial."""

    epsilon: float
    attack: str = "step_ll"
    static_models: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelRecipe:
    name: str
    role: str
    framework: str  # "torch" or "keras"
    architecture: Path  # the model.py every folder gets a copy of
    folders: tuple[Path, ...]  # the first is where the weights are written; the others get identical copies
    settings: TrainSettings = field(default_factory=TrainSettings)
    adversarial: Adversarial | None = None
    # Folders of attacks on an ensemble of sources: model.pt there is another model's (sample_io loads it), so
    # these get a copy of the weights as NAME.pt, beside the same model.py.
    ensemble_folders: tuple[Path, ...] = ()

    @property
    def weights_name(self) -> str:
        return "model.pt" if self.framework == "torch" else "model.weights.h5"


# The transfer attack on an ensemble of holdout models: holdout_b's model.pt and holdout_b_adv.pt.
ENSEMBLE_ATTACK = ATTACKS / "ens_mi_fgsm"
# The momentum iterative attacks (MI-FGSM and its DI, TI and ensemble variants) share one implementation.
MOMENTUM = ATTACKS / "mi_fgsm" / "momentum.py"
# The ImageNet samples' shared code (docs/imagenet.md): written in one of them, copied into the others.
IMAGENET_IO = REPO_ROOT / "sample_defenses_imagenet" / "inception_v3" / "imagenet_io.py"
IMAGENET_SAMPLES = tuple(
    sorted(p.parent for p in REPO_ROOT.glob("sample_*_imagenet/*/metadata.json") if p.parent != IMAGENET_IO.parent)
)

# Chosen on a validation split of the training images by training/tune.py (see training/README.md and tuning.json).
TRAIN_ATTACK = "fgsm"
TRAIN_EPSILON = 32.0
STATIC_MODELS = ("base_torch",)

RECIPES: dict[str, ModelRecipe] = {
    r.name: r
    for r in (
        ModelRecipe(
            "base_torch",
            "defense, undefended (model A); white-box source of the shipped attacks; static model of ens_adv_torch",
            "torch",
            MODEL_A,
            (
                DEFENSES / "base_torch",
                ATTACKS / "fgsm",
                ATTACKS / "step_ll",
                ATTACKS / "rand_step_ll",
                ATTACKS / "iter_fgsm",
                TARGETED / "step_target_class",
                TARGETED / "iter_target_class",
            ),
        ),
        ModelRecipe(
            "holdout_b",
            "holdout (model B): source of the black-box attacks; no defense is trained with it",
            "torch",
            REPO_ROOT / "training" / "models" / "model_b.py",
            (
                ATTACKS / "step_ll_holdout",
                ATTACKS / "fgsm_holdout",
                ATTACKS / "mi_fgsm",
                ATTACKS / "di_mi_fgsm",
                ATTACKS / "ti_mi_fgsm",
                ENSEMBLE_ATTACK,
                TARGETED / "mi_target_class",
            ),
        ),
        ModelRecipe(
            "holdout_b_adv",
            "holdout (model B), adversarial training with FGSM examples of itself: source of mi_fgsm_adv_holdout "
            "and of the ensemble attack; no defense is trained with it",
            "torch",
            REPO_ROOT / "training" / "models" / "model_b.py",
            (ATTACKS / "mi_fgsm_adv_holdout",),
            settings=TrainSettings(seed=2, threads=1),
            adversarial=Adversarial(32.0, "fgsm"),
            ensemble_folders=(ENSEMBLE_ATTACK,),
        ),
        ModelRecipe(
            "base_keras",
            "defense, undefended (model C, TensorFlow/Keras); holdout: source of the Keras black-box attack",
            "keras",
            DEFENSES / "base_keras" / "model.py",
            (DEFENSES / "base_keras", ATTACKS / "fgsm_keras"),
        ),
        ModelRecipe(
            "adv_torch",
            "defense (model A), adversarial training with FGSM examples of itself",
            "torch",
            MODEL_A,
            (DEFENSES / "adv_torch",),
            adversarial=Adversarial(TRAIN_EPSILON, TRAIN_ATTACK),
        ),
        ModelRecipe(
            "ens_adv_torch",
            "defense (model A), ensemble adversarial training: FGSM examples of itself and of static models",
            "torch",
            MODEL_A,
            (DEFENSES / "ens_adv_torch",),
            adversarial=Adversarial(TRAIN_EPSILON, TRAIN_ATTACK, static_models=STATIC_MODELS),
        ),
    )
}

# Candidates that training/tune.py tried and did not choose; trained only there, into its scratch folder.
TUNING_ONLY: dict[str, ModelRecipe] = {
    "static_d": ModelRecipe(
        "static_d",
        "candidate static model (model D, fully connected) of ens_adv_torch; tried by tune.py, not chosen",
        "torch",
        REPO_ROOT / "training" / "models" / "model_d.py",
        (REPO_ROOT / "training" / "static_models" / "static_d",),
    ),
}
ALL_RECIPES = {**RECIPES, **TUNING_ONLY}

# Code written once and copied, under its own file name, into every folder that runs it: sample_io.py into each
# torch sample (the folders of the torch models), base_torch's defense.py into the other torch defenses, and the
# white-box attack.py into the black-box sample that runs the same code on the holdout model's files, and the
# momentum iterative attacks' code into each of their samples.
SHARED_CODE: dict[Path, tuple[Path, ...]] = {
    SAMPLE_IO: tuple(dict.fromkeys(f for r in RECIPES.values() if r.framework == "torch" for f in r.folders)),
    TORCH_DEFENSE: (DEFENSES / "adv_torch", DEFENSES / "ens_adv_torch"),
    ATTACKS / "fgsm" / "attack.py": (ATTACKS / "fgsm_holdout",),
    ATTACKS / "step_ll" / "attack.py": (ATTACKS / "step_ll_holdout",),
    ATTACKS / "mi_fgsm" / "attack.py": (ATTACKS / "mi_fgsm_adv_holdout",),
    MOMENTUM: (
        ATTACKS / "mi_fgsm_adv_holdout",
        ATTACKS / "di_mi_fgsm",
        ATTACKS / "ti_mi_fgsm",
        ENSEMBLE_ATTACK,
        TARGETED / "mi_target_class",
    ),
    IMAGENET_IO: IMAGENET_SAMPLES,
}


def shared_files(recipes: Iterable[ModelRecipe] = RECIPES.values()) -> list[tuple[Path, Path]]:
    """(source, copy) for every file that a sample folder holds a copy of: each recipe's model.py (from its
    architecture) in each of its folders and its weights (from its first folder) in the others, then SHARED_CODE."""
    pairs = []
    for recipe in recipes:
        pairs += [(recipe.architecture, folder / "model.py") for folder in recipe.folders]
        weights = recipe.folders[0] / recipe.weights_name
        pairs += [(weights, folder / recipe.weights_name) for folder in recipe.folders[1:]]
        pairs += [(recipe.architecture, folder / "model.py") for folder in recipe.ensemble_folders]
        pairs += [(weights, folder / f"{recipe.name}.pt") for folder in recipe.ensemble_folders]
    pairs += [(source, folder / source.name) for source, folders in SHARED_CODE.items() for folder in folders]
    unique = dict.fromkeys(pairs)  # an ensemble's folder gets one copy of its members' model.py
    return [(source, copy) for source, copy in unique if source.resolve() != copy.resolve()]


def sync_samples() -> list[Path]:
    """Writes every source of `shared_files` over its copies where they differ (no training); returns those copies."""
    rewritten = []
    for source, copy in shared_files():
        if not copy.is_file() or copy.read_bytes() != source.read_bytes():
            shutil.copyfile(source, copy)
            rewritten.append(copy)
    return rewritten
