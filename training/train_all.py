"""Retrains every sample model reproducibly and writes its weights where the samples read them.

Fixed seeds, deterministic algorithms, fixed thread counts and epoch counts; the 60,000 Fashion-MNIST training
images only (the test split is reported, never used to choose anything). Run from the repository root:

    python3 training/train_all.py                      # every model, in dependency order (about 25 minutes)
    python3 training/train_all.py --only adv_torch     # one model (its static models must exist)
    python3 training/train_all.py --sync-only          # no training: re-copy the shared files into the samples

Writes each model's `model.py` and weights into every folder of its recipe (training/sample_models.py), with the
code the samples share (sample_io.py, the torch defenses' defense.py: `SHARED_CODE`), and the training record into
training/training_log.json. training/tune.py calls `train_model` on a validation split.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the training modules import each other by plain name
sys.path.insert(0, str(HERE.parent))  # sandbox.fashion_mnist

import torch  # noqa: E402
from sample_models import ALL_RECIPES, RECIPES, REPO_ROOT, ModelRecipe, sync_samples  # noqa: E402
from torch_training import (  # noqa: E402
    AdversarialTraining,
    Splits,
    accuracy,
    load_dataset_1k,
    load_module,
    load_splits,
    save_weights,
    train,
)

TRAINING_LOG = HERE / "training_log.json"


def model_dir(recipe: ModelRecipe, scratch: Path | None) -> Path:
    """Where a model's model.py and weights are written and read: its first folder, or scratch/NAME when tuning."""
    return recipe.folders[0] if scratch is None else scratch / recipe.name


def load_torch_model(name: str, scratch: Path | None = None) -> torch.nn.Module:
    folder = model_dir(ALL_RECIPES[name], scratch)
    return load_module(folder / "model.py", f"{name}_model").load_model(str(folder / "model.pt"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _train_keras(recipe: ModelRecipe, weights: Path, validation: int) -> dict:
    """TensorFlow runs in a process of its own, never beside torch."""
    with tempfile.TemporaryDirectory() as tmp:
        summary_json = Path(tmp) / "summary.json"
        settings = recipe.settings
        command = [
            sys.executable,
            str(HERE / "keras_training.py"),
            str(weights),
            f"--epochs={settings.epochs}",
            f"--batch-size={settings.batch_size}",
            f"--learning-rate={settings.learning_rate}",
            f"--seed={settings.seed}",
            f"--threads={settings.threads}",
            f"--validation={validation}",
            f"--architecture={recipe.architecture}",
            f"--summary-json={summary_json}",
        ]
        subprocess.run(command, check=True)
        return json.loads(summary_json.read_text())


def train_model(recipe: ModelRecipe, splits: Splits, scratch: Path | None = None, validation: int = 0) -> dict:
    """Trains one model, writes model.py and its weights into its folder (and, outside tuning, every copy, with
    the shared code: `sync_samples`)."""
    folder = model_dir(recipe, scratch)
    folder.mkdir(parents=True, exist_ok=True)
    if recipe.architecture.resolve() != (folder / "model.py").resolve():
        shutil.copyfile(recipe.architecture, folder / "model.py")
    weights = folder / recipe.weights_name
    print(f"=== {recipe.name}: {recipe.role}", flush=True)
    if recipe.framework == "keras":
        summary = _train_keras(recipe, weights, validation)
    else:
        adversarial = None
        if recipe.adversarial is not None:
            statics = [load_torch_model(name, scratch) for name in recipe.adversarial.static_models]
            adversarial = AdversarialTraining(recipe.adversarial.epsilon, recipe.adversarial.attack, statics)
        build = load_module(recipe.architecture, f"{recipe.name}_arch").build_model
        model, seconds = train(build, splits, recipe.settings, adversarial, log=lambda m: print(m, flush=True))
        save_weights(model, weights)
        summary = {
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1),
            "eval_name": splits.eval_name,
            "eval_accuracy": round(accuracy(model, splits.x_eval, splits.y_eval), 4),
        }
    summary.update(
        {
            "role": recipe.role,
            "settings": vars(recipe.settings),
            "adversarial": vars(recipe.adversarial) if recipe.adversarial else None,
            "weights": str(weights.relative_to(scratch or HERE.parent)),
            "weights_bytes": weights.stat().st_size,
        }
    )
    if scratch is None:
        sync_samples()
        summary["weights_sha256"] = _sha256(weights)
        if recipe.framework == "torch":
            x_1k, y_1k = load_dataset_1k()
            summary["dataset_1k_accuracy"] = round(accuracy(load_torch_model(recipe.name), x_1k, y_1k), 4)
    print(f"=== {recipe.name}: {json.dumps(summary)}", flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", choices=sorted(RECIPES), help="train only this model")
    parser.add_argument("--sync-only", action="store_true", help="train nothing: re-copy the samples' shared files")
    args = parser.parse_args()
    if args.sync_only:
        rewritten = sync_samples()
        for copy in rewritten:
            print(f"rewrote {copy.relative_to(REPO_ROOT)}")
        print(f"{len(rewritten)} copies rewritten; the others already matched their sources")
        return
    names = args.only or list(RECIPES)
    splits = load_splits()
    record = json.loads(TRAINING_LOG.read_text()) if TRAINING_LOG.exists() else {}
    started = time.perf_counter()
    for name in names:
        record[name] = train_model(RECIPES[name], splits)
        record[name].setdefault("framework", f"torch {torch.__version__}")
        TRAINING_LOG.write_text(json.dumps(record, indent=2) + "\n")
    print(f"trained {', '.join(names)} in {time.perf_counter() - started:.0f} s; record in {TRAINING_LOG}")


if __name__ == "__main__":
    main()
