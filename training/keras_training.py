"""Trains base_keras (model C, TensorFlow/Keras) on the Fashion-MNIST training images; standard training.

Runs in its own process (train_all.py starts it) so that TensorFlow and torch never share one. Reproducible: fixed
seeds, TensorFlow's op determinism, oneDNN off, fixed thread counts.

    python3 training/keras_training.py OUT_WEIGHTS [--epochs 12] [--validation 0] [--seed 0] [--threads 2]
        [--architecture sample_defenses/base_keras/model.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"  # the same kernels, and so the same numbers, as the container
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_FILE = REPO_ROOT / "sample_defenses" / "base_keras" / "model.py"


def train_base_keras(
    weights_out: Path,
    epochs: int = 12,
    batch_size: int = 128,
    learning_rate: float = 1e-3,
    seed: int = 0,
    threads: int = 2,
    validation: int = 0,
    architecture: Path = MODEL_FILE,
) -> dict:
    """Trains and writes `weights_out` (a Keras `.weights.h5` file); returns a summary for the training record."""
    import keras
    import numpy as np
    import tensorflow as tf

    sys.path.insert(0, str(REPO_ROOT))
    from sandbox.fashion_mnist import load_split

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()

    images, labels = load_split("train")
    if validation > 0:  # the same seeded split as the torch models' tuning runs
        order = np.random.default_rng(seed).permutation(len(images))
        x_eval, y_eval = images[order[:validation]], labels[order[:validation]]
        images, labels = images[order[validation:]], labels[order[validation:]]
        eval_name = f"validation ({validation} training images)"
    else:
        x_eval, y_eval = load_split("test")
        eval_name = "test"
    x_train = images[..., None].astype(np.float32) / 255.0
    x_eval = x_eval[..., None].astype(np.float32) / 255.0

    spec = importlib.util.spec_from_file_location("base_keras_model", architecture)  # a submission file, not a module
    assert spec is not None and spec.loader is not None
    model_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(model_module)
    model = model_module.build_model()
    steps = epochs * -(-len(x_train) // batch_size)
    model.compile(
        optimizer=keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=steps)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    print(f"base_keras: train {len(x_train)} images, {model.count_params()} parameters, {threads} threads", flush=True)
    start = time.perf_counter()
    model.fit(
        x_train,
        labels.astype(np.int64),
        batch_size=batch_size,
        epochs=epochs,
        shuffle=True,
        validation_data=(x_eval, y_eval.astype(np.int64)),
        verbose=2,
    )
    seconds = time.perf_counter() - start
    weights_out.parent.mkdir(parents=True, exist_ok=True)
    # A compiled model's weights file also carries the optimizer's state (3x the size): save an uncompiled copy.
    inference = model_module.build_model()
    inference.set_weights(model.get_weights())
    inference.save_weights(weights_out)
    predictions = np.argmax(model.predict(x_eval, batch_size=1000, verbose=0), axis=1)
    summary = {
        "parameters": int(model.count_params()),
        "train_seconds": round(seconds, 1),
        "eval_name": eval_name,
        "eval_accuracy": round(float(np.mean(predictions == y_eval)), 4),
        "framework": f"tensorflow {tf.__version__}, keras {keras.__version__}",
    }
    if validation == 0:
        summary["dataset_1k_accuracy"] = round(_dataset_1k_accuracy(model), 4)
    print(f"base_keras: training time {seconds:.1f} s, {eval_name} accuracy {summary['eval_accuracy']:.4f}")
    return summary


def _dataset_1k_accuracy(model) -> float:
    """Accuracy on the shipped 1,000 test images, the figure the sample's README records (never for tuning)."""
    import csv

    import numpy as np
    from PIL import Image

    root = REPO_ROOT / "dataset" / "fashion_mnist_1k"
    with open(root / "dataset.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    images = np.stack([np.asarray(Image.open(root / "images" / f"{r['ImageId']}.png").convert("L")) for r in rows])
    labels = np.array([int(r["TrueLabel"]) for r in rows])
    predictions = np.argmax(model.predict(images[..., None].astype(np.float32) / 255.0, verbose=0), axis=1)
    return float(np.mean(predictions == labels))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("weights_out", type=Path)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--validation", type=int, default=0)
    parser.add_argument("--architecture", type=Path, default=MODEL_FILE, help="the model.py with build_model()")
    parser.add_argument("--summary-json", type=Path, default=None, help="where to write the summary")
    args = parser.parse_args()
    summary = train_base_keras(
        args.weights_out,
        args.epochs,
        args.batch_size,
        args.learning_rate,
        args.seed,
        args.threads,
        args.validation,
        args.architecture,
    )
    if args.summary_json:
        args.summary_json.write_text(json.dumps(summary))


if __name__ == "__main__":
    main()
