"""Looks for gradient masking (finding 2) beyond tune.py's grid: single-step adversarial training at a larger epsilon.

Trains model A with each ATTACK:EPSILON given (Step-LL or FGSM examples of itself, as adv_torch) on the 55,000
tuning images and prints, on the 5,000 held-out training images, the white-box error under the shipped attacks'
code at eps 16 and 32. A masked model shows R+Step-LL above Step-LL, or a single step that does not get stronger
with a larger epsilon. Nothing here is shipped; run from the repository root:

    python3 training/explore_masking.py step_ll:64 fgsm:76 [--scratch /tmp/sbx-masking]   # ~5 min per model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import tune  # noqa: E402
from sample_models import RECIPES, Adversarial  # noqa: E402
from torch_training import load_module, load_splits  # noqa: E402
from train_all import train_model  # noqa: E402


def setting(text: str) -> tuple[str, float]:
    attack, _, epsilon = text.partition(":")
    if attack not in tune.CANDIDATE_ATTACKS or not epsilon:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ATTACK:EPSILON with ATTACK one of step_ll, fgsm")
    return attack, float(epsilon)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("settings", nargs="+", type=setting, metavar="ATTACK:EPSILON")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/sbx-masking"))
    args = parser.parse_args()
    splits = load_splits(validation=tune.VALIDATION)
    x_val = (splits.x_eval.squeeze(1) * 255).round().to(torch.uint8).numpy()
    y_val = splits.y_eval.numpy()
    attacks = tune.attack_functions()
    for attack, epsilon in args.settings:
        name = f"adv_torch_{attack}_eps{epsilon:g}"
        recipe = dataclasses.replace(RECIPES["adv_torch"], name=name, adversarial=Adversarial(epsilon, attack))
        folder = args.scratch / name
        if not (folder / "model.pt").exists():
            train_model(recipe, splits, scratch=args.scratch, validation=tune.VALIDATION)
        model = load_module(folder / "model.py", name).load_model(str(folder / "model.pt"))
        errors = {"clean": tune.error(model, x_val, y_val)}
        for eps in tune.EPSILONS:
            for attack_name, attack_function in attacks.items():
                adversarial = tune.batched(attack_function, model, x_val, eps)
                errors[f"white {attack_name} {eps}"] = tune.error(model, adversarial, y_val)
        print(f"{name}: {json.dumps({k: round(v, 4) for k, v in errors.items()})}", flush=True)


if __name__ == "__main__":
    main()
