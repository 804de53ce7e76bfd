"""Writing real submission folders for tests: shell or Python entry points in the sandbox's own images."""

from __future__ import annotations

import json
from pathlib import Path

from sandbox.image_names import image_tag

BASE = image_tag("base")  # python3 and a shell, nothing else
TORCH = image_tag("torch-cpu")  # numpy and pillow too


def write_submission(
    parent: Path, name: str, kind: str, script: str, image: str = BASE, entry: str = "run.sh", **extra
) -> Path:
    folder = parent / name
    folder.mkdir(parents=True)
    metadata = {"type": kind, "container": image, "entry_point": entry, **extra}
    (folder / "metadata.json").write_text(json.dumps(metadata))
    (folder / entry).write_text(script)
    (folder / entry).chmod(0o755)
    return folder


NOOP_ATTACK = '#!/bin/sh\ncp "$1"/*.png "$2"/\n'
FIXED_LABEL_DEFENSE = '#!/bin/sh\nfor f in "$1"/*.png; do echo "$(basename "$f"),3"; done > "$2"\n'
NOISE_255_ATTACK = """#!/usr/bin/env python3
import sys, pathlib
import numpy as np
from PIL import Image
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for i, path in enumerate(sorted(src.glob("*.png"))):
    x = np.asarray(Image.open(path))
    sign = np.where((np.arange(x.size).reshape(x.shape) + i) % 2 == 0, 255, -255)
    Image.fromarray(np.clip(x.astype(int) + sign, 0, 255).astype(np.uint8)).save(dst / path.name)
"""
