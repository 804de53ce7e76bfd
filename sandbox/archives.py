"""Submission archives (.zip, .tar.gz): every reason not to unpack one, and unpacking once there is none.

Archives are hostile input: an entry may name an absolute or `..` path, be a link or a device, or unpack to more
bytes or files than a disk should take. `archive_problems` lists each such entry; `unpack_archive` refuses while
any is left, then makes every file readable by the container's user.
"""

from __future__ import annotations

import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from sandbox.errors import SubmissionError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
MAX_ARCHIVE_BYTES = 2 * 1024**3
MAX_ARCHIVE_FILES = 20_000
REPACK = "package with `sandbox package`"


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def is_image_archive(path: Path) -> bool:
    """A `docker save` tar of a submission image (`sandbox package --image --save`)."""
    return path.is_file() and path.name.endswith(".tar")


def _unsafe_path(name: str) -> bool:
    member = PurePosixPath(name)
    return member.is_absolute() or ".." in member.parts or name.startswith(("/", "\\")) or "\\" in name


def _zip_kind(mode: int) -> str:
    """A zip entry's kind from its Unix mode. Many tools (Python's `writestr`, Windows zippers) store permission
    bits with no file type, or no mode at all: those are regular files."""
    if stat.S_ISLNK(mode):
        return "link"
    if stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "special file"
    return "folder" if stat.S_ISDIR(mode) else "file"


def _tar_kind(member: tarfile.TarInfo) -> str:
    if member.isreg():
        return "file"
    if member.isdir():
        return "folder"
    return "link" if member.issym() or member.islnk() else "special file"


def _entries(archive: Path) -> list[tuple[str, str, int]]:
    """(name, kind, size) of every entry, read from the archive's index without unpacking anything."""
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            return [(i.filename, _zip_kind(i.external_attr >> 16), i.file_size) for i in zf.infolist()]
    with tarfile.open(archive, "r:*") as tf:
        return [(m.name, _tar_kind(m), m.size) for m in tf.getmembers()]


def archive_problems(archive: Path) -> list[SubmissionError]:
    """Every reason not to unpack an archive, one error each: unsafe paths, links, special files, size."""
    try:
        entries = _entries(archive)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        return [SubmissionError(archive, f"not a readable archive ({exc})", "re-create it with `sandbox package`")]
    problems: list[SubmissionError] = []
    for name, kind, _ in entries:
        if _unsafe_path(name):
            problems.append(SubmissionError(archive, f"unsafe path '{name}'", f"use relative paths only ({REPACK})"))
        elif kind in ("link", "special file"):
            problems.append(SubmissionError(archive, f"'{name}' is a {kind}", "ship regular files only"))
    if len(entries) > MAX_ARCHIVE_FILES:
        problems.append(
            SubmissionError(archive, f"{len(entries)} files, more than {MAX_ARCHIVE_FILES}", "ship fewer files")
        )
    total = sum(size for _, _, size in entries)
    if total > MAX_ARCHIVE_BYTES:
        problems.append(
            SubmissionError(archive, f"unpacks to {total} bytes, more than {MAX_ARCHIVE_BYTES}", "ship less")
        )
    return problems


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpacks after `archive_problems` found nothing: no absolute or `..` paths, links or special files."""
    problems = archive_problems(archive)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise SubmissionError(first.where, first.problem + more, first.fix)
    dest.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                target = dest / PurePosixPath(info.filename)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                target.chmod(0o755 if (info.external_attr >> 16) & 0o111 else 0o644)
    else:
        with tarfile.open(archive, "r:*") as tf:
            tf.extractall(dest, filter="data")
    for path in [dest, *dest.rglob("*")]:  # the container user (65534) must be able to read everything
        path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
