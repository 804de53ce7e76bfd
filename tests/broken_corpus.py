"""A corpus of broken submissions: each kind, how to make it, and what `sandbox validate` must say.

Every entry is (name, builder, level, message fragment). The builder writes the submission under a parent
folder and returns its path (a folder or an archive).
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path

from tests.submissions import BASE, FIXED_LABEL_DEFENSE, NOISE_255_ATTACK, NOOP_ATTACK, TORCH, write_submission

Builder = Callable[[Path], Path]

PY_ATTACK = """#!/usr/bin/env python3
import sys, pathlib
from PIL import Image
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for i, path in enumerate(sorted(src.glob("*.png"))):
    {body}
"""


def _py_attack(parent: Path, name: str, body: str) -> Path:
    return write_submission(parent, name, "attack", PY_ATTACK.format(body=body), image=TORCH, entry="attack.py")


def missing_metadata(parent: Path) -> Path:
    folder = write_submission(parent, "missing_metadata", "attack", NOOP_ATTACK)
    (folder / "metadata.json").unlink()
    return folder


def bad_type(parent: Path) -> Path:
    folder = write_submission(parent, "bad_type", "attack", NOOP_ATTACK)
    (folder / "metadata.json").write_text(json.dumps({"type": "atack", "container": BASE, "entry_point": "run.sh"}))
    return folder


def missing_entry_point(parent: Path) -> Path:
    folder = write_submission(parent, "missing_entry_point", "attack", NOOP_ATTACK)
    (folder / "run.sh").unlink()
    return folder


def not_executable(parent: Path) -> Path:
    folder = write_submission(parent, "not_executable", "attack", NOOP_ATTACK)
    (folder / "run.sh").chmod(0o644)
    return folder


def crlf_shebang(parent: Path) -> Path:
    return write_submission(parent, "crlf_shebang", "attack", NOOP_ATTACK.replace("\n", "\r\n"))


def no_shebang(parent: Path) -> Path:
    return write_submission(parent, "no_shebang", "attack", 'cp "$1"/*.png "$2"/\n')


def unknown_image(parent: Path) -> Path:
    return write_submission(parent, "unknown_image", "attack", NOOP_ATTACK, image="nobody/nothing:1")


def writes_jpeg(parent: Path) -> Path:
    return _py_attack(parent, "writes_jpeg", 'Image.open(path).save(dst / path.name, format="JPEG")')


def wrong_size(parent: Path) -> Path:
    return _py_attack(parent, "wrong_size", "Image.open(path).resize((32, 32)).save(dst / path.name)")


def misses_images(parent: Path) -> Path:
    return _py_attack(parent, "misses_images", "if i % 2 == 0: Image.open(path).save(dst / path.name)")


def crashes(parent: Path) -> Path:
    return write_submission(parent, "crashes", "attack", "#!/bin/sh\necho 'cannot load weights.pt' >&2\nexit 1\n")


def too_slow(parent: Path) -> Path:
    return write_submission(parent, "too_slow", "attack", "#!/bin/sh\nsleep 60\n")


def zip_slip(parent: Path) -> Path:
    archive = parent / "zip_slip.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"type": "attack", "container": BASE, "entry_point": "run.sh"}))
        zf.writestr("../../evil.sh", "#!/bin/sh\n")
    return archive


def symlink_in_archive(parent: Path) -> Path:
    archive = parent / "symlink_in_archive.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("weights.pt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/shadow"
        tf.addfile(info)
    return archive


def huge_archive(parent: Path) -> Path:
    """2.1 GB of zeros that compress to a few MB: over the unpacked-size limit."""
    archive = parent / "huge_archive.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        zf.writestr("metadata.json", json.dumps({"type": "attack", "container": BASE, "entry_point": "run.sh"}))
        block = bytes(64 * 1024**2)
        with zf.open("weights.bin", "w", force_zip64=True) as f:
            for _ in range(33):
                f.write(block)
    return archive


def result_missing_lines(parent: Path) -> Path:
    script = (
        '#!/bin/sh\ni=0\nfor f in "$1"/*.png; do i=$((i+1)); '
        '[ $((i % 2)) -eq 0 ] && echo "$(basename "$f"),1"; done > "$2"\n'
    )
    return write_submission(parent, "result_missing_lines", "defense", script)


def result_unparseable(parent: Path) -> Path:
    return write_submission(
        parent,
        "result_unparseable",
        "defense",
        '#!/bin/sh\nfor f in "$1"/*.png; do echo "$(basename "$f"),3.0"; done > "$2"\n',
    )


def label_out_of_range(parent: Path) -> Path:
    return write_submission(
        parent,
        "label_out_of_range",
        "defense",
        '#!/bin/sh\nfor f in "$1"/*.png; do echo "$(basename "$f"),99"; done > "$2"\n',
    )


def no_result(parent: Path) -> Path:
    return write_submission(parent, "no_result", "defense", "#!/bin/sh\nexit 0\n")


# Warnings: what the run repairs silently.
def exceeds_eps(parent: Path) -> Path:
    return write_submission(parent, "exceeds_eps", "attack", NOISE_255_ATTACK, image=TORCH, entry="attack.py")


def wrong_mode(parent: Path) -> Path:
    return _py_attack(parent, "wrong_mode", 'Image.open(path).convert("RGB").save(dst / path.name)')


def unknown_field(parent: Path) -> Path:
    return write_submission(parent, "unknown_field", "defense", FIXED_LABEL_DEFENSE, team="red")


def nonzero_exit_complete(parent: Path) -> Path:
    return write_submission(parent, "nonzero_exit_complete", "attack", NOOP_ATTACK + "exit 2\n")


CORPUS: list[tuple[str, Builder, str, str]] = [
    ("missing_metadata", missing_metadata, "error", "no metadata.json at the root"),
    ("bad_type", bad_type, "error", "field 'type'"),
    ("missing_entry_point", missing_entry_point, "error", "is not a file in the submission"),
    ("not_executable", not_executable, "error", "chmod +x"),
    ("crlf_shebang", crlf_shebang, "error", "CRLF"),
    ("no_shebang", no_shebang, "error", "no #! line"),
    ("unknown_image", unknown_image, "error", "docker pull nobody/nothing:1"),
    ("writes_jpeg", writes_jpeg, "error", "are not PNG files"),
    ("wrong_size", wrong_size, "error", "have the wrong size"),
    ("misses_images", misses_images, "error", "10 of 20 output images missing"),
    ("crashes", crashes, "error", "exited with code 1 and its outputs are incomplete"),
    ("too_slow", too_slow, "error", "timed out"),
    ("zip_slip", zip_slip, "error", "unsafe path '../../evil.sh'"),
    ("symlink_in_archive", symlink_in_archive, "error", "'weights.pt' is a link"),
    ("huge_archive", huge_archive, "error", "more than 2147483648"),
    ("result_missing_lines", result_missing_lines, "error", "10 of 20 images have no label"),
    ("result_unparseable", result_unparseable, "error", "result.csv lines cannot be parsed"),
    ("label_out_of_range", label_out_of_range, "error", "labels [99] are outside 0..9"),
    ("no_result", no_result, "error", "wrote no result.csv"),
    ("exceeds_eps", exceeds_eps, "warning", "pixel values exceed epsilon 16"),
    ("wrong_mode", wrong_mode, "warning", "are not mode L"),
    ("unknown_field", unknown_field, "warning", "unknown field 'team'"),
    ("nonzero_exit_complete", nonzero_exit_complete, "warning", "exited with code 2 although its outputs are complete"),
]
