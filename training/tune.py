"""Chooses the adversarial training settings on a validation split of the training images (never the test images).

Trains the standard models (base_torch, holdout_b, static_d) on 55,000 training images, then adv_torch with each
candidate training attack (Step-LL, FGSM) and epsilon (16, 32), and ens_adv_torch with each candidate set of
static models, and measures, on the 5,000 held-out training images, the error under the shipped attacks' own code
(imported from the sample folders):

  clean; at eps 16 and 32: white-box Step-LL, FGSM, R+Step-LL, I-FGSM; black-box (Step-LL, FGSM, R+Step-LL,
  I-FGSM computed on holdout_b).

The criterion is the mean of five errors: clean, and at each eps the worse white-box single-step attack (Step-LL,
FGSM: what adversarial training defends against) and the worst black-box attack. The adv_torch attack and epsilon
are chosen first and shared by ens_adv_torch, as in the paper; then the static models. Run from the repository root:

    python3 training/tune.py [--scratch /tmp/sbx-tune]      # about an hour on 2 cores; writes tuning.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sample_models import ALL_RECIPES, ATTACKS, RECIPES, Adversarial  # noqa: E402
from torch_training import load_module, load_splits  # noqa: E402
from train_all import load_torch_model, model_dir, train_model  # noqa: E402

VALIDATION = 5000
EPSILONS = (16, 32)
CANDIDATE_EPSILONS = (16.0, 32.0)
CANDIDATE_ATTACKS = ("step_ll", "fgsm")  # Step-LL as on ImageNet in the paper, FGSM as on MNIST
CANDIDATE_STATICS = (("base_torch",), ("base_torch", "static_d"))
TUNING_JSON = HERE / "tuning.json"


def load_attack(sample: str, function: str) -> Callable:
    """The attack function of a shipped sample, so that tuning measures exactly the code the sandbox runs."""
    folder = ATTACKS / sample
    sys.path.insert(0, str(folder))  # attack.py imports the folder's sample_io.py, which imports its model.py
    try:
        module = load_module(folder / "attack.py", f"{sample}_attack")
    finally:
        sys.path.remove(str(folder))
        for name in ("model", "sample_io"):  # each sample has its own
            sys.modules.pop(name, None)
    return getattr(module, function)


def attack_functions() -> dict[str, Callable[[torch.nn.Module, np.ndarray, int], np.ndarray]]:
    step_ll, fgsm = load_attack("step_ll", "step_ll"), load_attack("fgsm", "fgsm")
    rand_step_ll, iter_fgsm = load_attack("rand_step_ll", "rand_step_ll"), load_attack("iter_fgsm", "iter_fgsm")
    return {
        "Step-LL": step_ll,
        "FGSM": fgsm,
        "R+Step-LL": lambda m, x, eps: rand_step_ll(m, x, eps, 0),
        "I-FGSM": iter_fgsm,
    }


@torch.no_grad()
def error(model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    predictions = model(torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)).argmax(1).numpy()
    return float(np.mean(predictions != y))


def batched(attack: Callable, model: torch.nn.Module, x: np.ndarray, eps: int, size: int = 500) -> np.ndarray:
    return np.concatenate([attack(model, x[i : i + size], eps) for i in range(0, len(x), size)])


def evaluate(model: torch.nn.Module, x: np.ndarray, y: np.ndarray, black_box: dict[str, np.ndarray]) -> dict:
    attacks = attack_functions()
    errors = {"clean": error(model, x, y)}
    for eps in EPSILONS:
        for name, attack in attacks.items():
            errors[f"white {name} {eps}"] = error(model, batched(attack, model, x, eps), y)
        for name, images in black_box.items():
            if name.endswith(f" {eps}"):
                errors[f"black {name}"] = error(model, images, y)
        black = [v for k, v in errors.items() if k.startswith("black ") and k.endswith(f" {eps}")]
        errors[f"black max {eps}"] = max(black)
    terms = [errors["clean"]]
    for eps in EPSILONS:
        terms += [max(errors[f"white Step-LL {eps}"], errors[f"white FGSM {eps}"]), errors[f"black max {eps}"]]
    errors["criterion"] = float(np.mean(terms))
    return {k: round(v, 4) for k, v in errors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/sbx-tune"))
    args = parser.parse_args()
    splits = load_splits(validation=VALIDATION)
    x_val = (splits.x_eval.squeeze(1) * 255).round().to(torch.uint8).numpy()
    y_val = splits.y_eval.numpy()
    results = json.loads(TUNING_JSON.read_text()) if TUNING_JSON.exists() else {}

    def ensure(recipe) -> torch.nn.Module:
        if not (model_dir(recipe, args.scratch) / recipe.weights_name).exists():
            train_model(recipe, splits, scratch=args.scratch, validation=VALIDATION)
        folder = model_dir(recipe, args.scratch)
        return load_module(folder / "model.py", f"{recipe.name}_tuned").load_model(str(folder / "model.pt"))

    for name in ("base_torch", "holdout_b", "static_d"):
        ensure(ALL_RECIPES[name])
    holdout = load_torch_model("holdout_b", args.scratch)
    black_box = {
        f"{name} {eps}": batched(attack, holdout, x_val, eps)
        for eps in EPSILONS
        for name, attack in attack_functions().items()
    }

    def measure(label: str, model: torch.nn.Module) -> dict:
        results[label] = evaluate(model, x_val, y_val, black_box)
        TUNING_JSON.write_text(json.dumps(results, indent=2) + "\n")
        print(f"{label}: {json.dumps(results[label])}", flush=True)
        return results[label]

    measure("base_torch", load_torch_model("base_torch", args.scratch))
    adv = RECIPES["adv_torch"]
    by_setting = {}
    for attack in CANDIDATE_ATTACKS:
        for eps in CANDIDATE_EPSILONS:
            name = f"adv_torch_{attack}_eps{eps:g}"
            variant = dataclasses.replace(adv, name=name, adversarial=Adversarial(eps, attack))
            by_setting[attack, eps] = measure(variant.name, ensure(variant))["criterion"]
    best_attack, best_eps = min(by_setting, key=by_setting.get)
    ens = RECIPES["ens_adv_torch"]
    by_statics = {}
    for statics in CANDIDATE_STATICS:
        name = f"ens_adv_torch_{best_attack}_eps{best_eps:g}_{'+'.join(statics)}"
        settings = Adversarial(best_eps, best_attack, static_models=statics)
        by_statics[statics] = measure(name, ensure(dataclasses.replace(ens, name=name, adversarial=settings)))[
            "criterion"
        ]
    best_statics = min(by_statics, key=by_statics.get)
    results["chosen"] = {"attack": best_attack, "train_epsilon": best_eps, "static_models": list(best_statics)}
    TUNING_JSON.write_text(json.dumps(results, indent=2) + "\n")
    print(f"chosen: {best_attack} at training epsilon {best_eps:g}, static models {', '.join(best_statics)}")


if __name__ == "__main__":
    main()
