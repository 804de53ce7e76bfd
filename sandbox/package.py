"""`sandbox package`: a deterministic submission archive, and optionally a self-contained image.

Same files, same bytes: entries sorted, timestamps fixed, permissions normalised (0755 for executables, else
0644). Files a submission must not ship (caches, VCS folders, links, very large files) are left out and listed.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from sandbox.errors import SandboxError
from sandbox.store import write_atomically
from sandbox.submission import find_root, read_metadata

EXCLUDED_NAMES = frozenset(
    {
        "__pycache__",
        ".git",
        ".hg",
        ".svn",
        ".DS_Store",
        ".ipynb_checkpoints",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
        ".venv",
        "venv",
    }
)
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
MAX_FILE_BYTES = 100 * 1024**2
FIXED_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass
class PackageResult:
    archive: Path
    files: list[str] = field(default_factory=list)
    left_out: list[tuple[str, str]] = field(default_factory=list)  # (relative path, why)
    image: str | None = None
    saved_image: Path | None = None


def _collect(
    root: Path, allow_large: bool, skip: Path | None = None
) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    files, left_out = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in sorted(dirnames):
            path = base / name
            relative = path.relative_to(root).as_posix()
            if name in EXCLUDED_NAMES:
                left_out.append((relative + "/", "not needed at run time"))
                dirnames.remove(name)
            elif path.is_symlink():
                left_out.append((relative + "/", "a link; copy what it points to instead"))
                dirnames.remove(name)
        for name in sorted(filenames):
            path = base / name
            relative = path.relative_to(root).as_posix()
            if skip is not None and path.resolve() == skip:
                continue  # the archive being written, when it is written inside the folder
            if name in EXCLUDED_NAMES or name.endswith(EXCLUDED_SUFFIXES):
                left_out.append((relative, "not needed at run time"))
            elif path.is_symlink() or not path.is_file():
                left_out.append((relative, "a link or special file; ship regular files"))
            elif not allow_large and path.stat().st_size > MAX_FILE_BYTES:
                size = path.stat().st_size // 1024**2
                left_out.append((relative, f"{size} MiB, over {MAX_FILE_BYTES // 1024**2} MiB; use --allow-large"))
            else:
                files.append((relative, path))
    return sorted(files), left_out


def archive_bytes(
    root: Path, allow_large: bool = False, skip: Path | None = None
) -> tuple[bytes, list[str], list[tuple[str, str]]]:
    """The zip's bytes for the submission at `root`, the files in it and what was left out."""
    files, left_out = _collect(root, allow_large, skip)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for relative, path in files:
            info = zipfile.ZipInfo(relative, date_time=FIXED_TIME)
            info.create_system = 3  # unix, so the permission bits are read back
            executable = os.access(path, os.X_OK)
            info.external_attr = (0o100755 if executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, path.read_bytes(), compresslevel=9)
    return buffer.getvalue(), [relative for relative, _ in files], left_out


def package_submission(
    folder: Path,
    out: Path | None = None,
    allow_large: bool = False,
    image: bool = False,
    save: Path | None = None,
) -> PackageResult:
    """Writes FOLDER.zip (the archive's name is the submission's id); `image` also builds it into an image."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SandboxError(folder, "not a folder", "pass the submission folder that holds metadata.json")
    root = find_root(folder)
    metadata = read_metadata(root / "metadata.json")
    out = Path(out) if out else folder.resolve().parent / f"{folder.resolve().name}.zip"
    if out.suffix != ".zip":
        raise SandboxError(out, "the archive must end in .zip", "its name (without .zip) is the submission's id")
    data, files, left_out = archive_bytes(root, allow_large, skip=out.resolve())
    if PurePosixPath(metadata.entry_point).as_posix() not in files:  # `./run.sh` is `run.sh`, as in a run
        raise SandboxError(root / metadata.entry_point, "the entry point would be left out", "it must be shipped")
    write_atomically(out, data)
    result = PackageResult(out, files, left_out)
    if image or save:
        from sandbox.submission_image import build_submission_image, save_image

        result.image = build_submission_image(out, metadata.container, hashlib.sha256(data).hexdigest()[:12])
        if save:
            result.saved_image = save_image(result.image, Path(save))
    return result
