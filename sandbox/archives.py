"""Submission archives (.zip, .tar.gz): every reason not to unpack one, and unpacking once there is none.

Archives are hostile input: an entry may name an absolute or `..` path, be a link or a device, or unpack to more
bytes or files than a disk should take. `archive_problems` lists each such entry; `unpack_archive` refuses while
any is left, then makes every file readable by the container's user.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
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


MAX_TAR_META_BYTES = 64 * 1024  # a long name or PAX header (ours are a few hundred bytes)
_TAR_META_TYPES = (b"L", b"K", b"x", b"g")  # GNU long name and link, PAX extended and global headers


def _open_decompressed(archive: Path) -> io.BufferedIOBase:
    with archive.open("rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(archive, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(archive, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(archive, "rb")
    return archive.open("rb")


def _tar_size(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # base-256, for sizes over 8 GiB
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _tar_header_problem(archive: Path) -> str | None:
    """Reads a tar's raw headers, skipping the data, and stops at the first that would cost unbounded memory or
    time before tarfile's own checks: tarfile reads a long-name or PAX header whole into memory (200 MB from a
    200 KB .tgz), and lists every member before any limit is looked at."""
    files = total = 0
    with _open_decompressed(archive) as stream:
        while True:
            header = stream.read(512)
            if len(header) < 512 or header == bytes(512):
                return None  # the end (tarfile itself reports a truncated archive)
            try:
                size = _tar_size(header[124:136])
            except ValueError:
                return None  # not a tar header: tarfile says so
            if header[156:157] in _TAR_META_TYPES:
                if size > MAX_TAR_META_BYTES:
                    return f"a name or PAX header of {size} bytes (at most {MAX_TAR_META_BYTES})"
            else:
                files, total = files + 1, total + size
                if files > MAX_ARCHIVE_FILES:
                    return f"more than {MAX_ARCHIVE_FILES} files"
                if total > MAX_ARCHIVE_BYTES:
                    return f"unpacks to more than {MAX_ARCHIVE_BYTES} bytes"
            remaining = -(-size // 512) * 512
            while remaining:
                step = stream.read(min(remaining, 1 << 20))
                if not step:
                    return None
                remaining -= len(step)


def archive_problems(archive: Path) -> list[SubmissionError]:
    """Every reason not to unpack an archive, one error each: unsafe paths, links, special files, size."""
    try:
        too_much = None if archive.name.endswith(".zip") else _tar_header_problem(archive)
        if too_much:
            return [SubmissionError(archive, too_much, f"ship less ({REPACK})")]
        entries = _entries(archive)
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError, lzma.LZMAError) as exc:
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
