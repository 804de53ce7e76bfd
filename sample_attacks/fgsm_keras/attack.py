"""FGSM (Goodfellow et al., 2015) in TensorFlow/Keras, white-box against base_keras (model C).

x_adv = clip(x + epsilon * sign(grad_x J(theta, x, y_pred)), 0, 255) in pixel units, where y_pred is the model's own
prediction on x (attacks are not given labels). Against the torch defenses this is a black-box (transfer) attack
from a holdout model: no defense was trained with base_keras.

Usage: python3 attack.py INPUT_DIR OUTPUT_DIR EPSILON
"""

import os
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from model import load_model
from PIL import Image

WEIGHTS = Path(__file__).resolve().parent / "model.weights.h5"


def num_threads() -> int:
    """The sandbox sets OMP_NUM_THREADS to the piece's CPU limit."""
    try:
        return max(1, int(float(os.environ.get("OMP_NUM_THREADS", "1"))))
    except ValueError:
        return 1


def load_batch(paths: list[Path]) -> np.ndarray:
    """PNG files -> uint8 [N, 28, 28]; the model only reads 28x28 grayscale images."""
    images = []
    for path in paths:
        with Image.open(path) as image:
            if image.mode != "L" or image.size != (28, 28):
                sys.exit(f"{path.name}: expected a 28x28 'L' image, got {image.size} {image.mode!r}")
            images.append(np.asarray(image))
    return np.stack(images)


def fgsm(model: keras.Model, x: np.ndarray, epsilon: int) -> np.ndarray:
    """uint8 [N, H, W] -> uint8 [N, H, W], one signed-gradient step of size epsilon that raises the loss."""
    x_in = tf.convert_to_tensor(x[..., None].astype(np.float32) / 255.0)
    with tf.GradientTape() as tape:
        tape.watch(x_in)
        logits = model(x_in, training=False)
        y_pred = tf.stop_gradient(tf.argmax(logits, axis=1))
        loss = tf.reduce_sum(keras.losses.sparse_categorical_crossentropy(y_pred, logits, from_logits=True))
    step = epsilon * np.sign(tape.gradient(loss, x_in).numpy()[..., 0]).astype(np.int16)
    return np.clip(x.astype(np.int16) + step, 0, 255).astype(np.uint8)


def attack(input_dir: Path, output_dir: Path, epsilon: int, batch_size: int = 100) -> None:
    model = load_model(str(WEIGHTS))
    paths = sorted(p for p in input_dir.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    for i in range(0, len(paths), batch_size):
        batch = paths[i : i + batch_size]
        for path, x_adv in zip(batch, fgsm(model, load_batch(batch), epsilon), strict=True):
            Image.fromarray(x_adv).save(output_dir / path.name)


def main() -> None:
    if len(sys.argv) != 4:
        sys.exit("usage: attack.py INPUT_DIR OUTPUT_DIR EPSILON")
    tf.config.threading.set_intra_op_parallelism_threads(num_threads())
    tf.config.threading.set_inter_op_parallelism_threads(1)
    attack(Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]))


if __name__ == "__main__":
    main()
