"""Every model the samples ship, how it is trained, and which folders get its model.py and weights.

A model lives in one or more folders that each hold its `model.py` (with `load_model(path)`) and weights file:
the defense that is the model, and every attack that computes gradients on it (submissions are self-contained).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from torch_training import TrainSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
ATTACKS = REPO_ROOT / "sample_attacks"
TARGETED = REPO_ROOT / "sample_targeted_attacks"
DEFENSES = REPO_ROOT / "sample_defenses"
MODEL_A = DEFENSES / "base_torch" / "model.py"


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

    @property
    def weights_name(self) -> str:
        return "model.pt" if self.framework == "torch" else "model.weights.h5"


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
                ATTACKS / "rand_fgsm",
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
            (ATTACKS / "step_ll_holdout", ATTACKS / "fgsm_holdout"),
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
