"""Submissions (SPEC 2): a folder or an archive with `metadata.json`, an entry point and code."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from sandbox.errors import SubmissionError

SubmissionType = Literal["attack", "targeted_attack", "defense"]
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")
MAX_ARCHIVE_BYTES = 2 * 1024**3
MAX_ARCHIVE_FILES = 20_000


class Metadata(BaseModel):
    """`metadata.json`; unknown fields are kept (NIPS 2017 submissions load unchanged) and warned about."""

    model_config = ConfigDict(extra="allow")

    type: SubmissionType
    container: str
    entry_point: str
    container_gpu: str | None = None
    name: str | None = None
    description: str | None = None
    authors: str | list[str] | None = None
    source_model: str | None = None

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


@dataclass(frozen=True)
class Submission:
    """A loaded, checked submission. `id` is its folder or archive name, as in the 2017 toolkit."""

    id: str
    root: Path
    metadata: Metadata
    warnings: tuple[str, ...] = ()

    @property
    def type(self) -> SubmissionType:
        return self.metadata.type

    @property
    def display_name(self) -> str:
        return self.metadata.name or self.id

    def image(self, gpu: bool) -> str:
        return (self.metadata.container_gpu or self.metadata.container) if gpu else self.metadata.container


@dataclass(frozen=True)
class LeftOut:
    """A submission that could not take part, with the one-line reason."""

    id: str
    path: Path
    error: str


@dataclass
class SubmissionSet:
    submissions: list[Submission] = field(default_factory=list)
    left_out: list[LeftOut] = field(default_factory=list)


def submission_id(path: Path) -> str:
    name = path.name
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def _format_validation_error(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(document)"
    expected = ""
    if first["type"] == "literal_error":
        expected = "; use one of attack, targeted_attack, defense"
    elif first["type"] == "missing":
        expected = "; add it"
    return f"{path}: field '{where}': {first['msg']}{expected}"


def read_metadata(path: Path) -> Metadata:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise SubmissionError(f"{path}: missing; every submission needs metadata.json at its root") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubmissionError(f"{path}: not valid JSON ({exc}); fix the syntax") from None
    if not isinstance(data, dict):
        raise SubmissionError(f"{path}: must hold a JSON object with type, container and entry_point")
    try:
        return Metadata.model_validate(data)
    except ValidationError as exc:
        raise SubmissionError(_format_validation_error(path, exc)) from None


def find_root(folder: Path) -> Path:
    """metadata.json sits at the root, or inside the archive's single top-level folder."""
    if (folder / "metadata.json").is_file():
        return folder
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        if (entries[0] / "metadata.json").is_file():
            return entries[0]
    raise SubmissionError(f"{folder}: no metadata.json at the root; put it beside the entry point")


def check_entry_point(root: Path, entry_point: str) -> None:
    metadata_path = root / "metadata.json"
    relative = PurePosixPath(entry_point)
    if relative.is_absolute() or ".." in relative.parts or not entry_point.strip():
        raise SubmissionError(f"{metadata_path}: entry_point '{entry_point}' must be a path inside the submission")
    target = root / relative
    if target.is_symlink() or not target.is_file():
        raise SubmissionError(f"{metadata_path}: entry_point '{entry_point}' is not a file in the submission")
    if not os.access(target, os.X_OK):
        raise SubmissionError(f"{target}: entry point is not executable; run `chmod +x {entry_point}`")


def load_submission(path: Path, unpack_dir: Path | None = None) -> Submission:
    """Loads one submission folder or archive; archives are unpacked safely into `unpack_dir`."""
    path = Path(path)
    sub_id = submission_id(path)
    if is_archive(path):
        if unpack_dir is None:
            raise SubmissionError(f"{path}: archives need a folder to unpack into")
        folder = unpack_dir / sub_id
        if folder.exists():
            shutil.rmtree(folder)
        unpack_archive(path, folder)
    elif path.is_dir():
        folder = path
    else:
        raise SubmissionError(f"{path}: not a folder or a .zip/.tar.gz archive")
    root = find_root(folder)
    metadata = read_metadata(root / "metadata.json")
    check_entry_point(root, metadata.entry_point)
    warnings = tuple(
        f"{root / 'metadata.json'}: unknown field '{name}' kept and ignored" for name in metadata.unknown_fields()
    )
    return Submission(id=sub_id, root=root.resolve(), metadata=metadata, warnings=warnings)


def load_submissions(folders: list[Path], kind: SubmissionType, unpack_dir: Path | None) -> SubmissionSet:
    """Loads every submission in the given folders; bad ones are left out with a reason, the rest go on."""
    result = SubmissionSet()
    seen: set[str] = set()
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            result.left_out.append(LeftOut(folder.name, folder, f"{folder}: no such folder of {kind} submissions"))
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or not (entry.is_dir() or is_archive(entry)):
                continue
            sub_id = submission_id(entry)
            if sub_id in seen:
                message = f"{entry}: a submission with id '{sub_id}' was already loaded; rename one of them"
                result.left_out.append(LeftOut(sub_id, entry, message))
                continue
            seen.add(sub_id)
            try:
                submission = load_submission(entry, unpack_dir)
            except SubmissionError as exc:
                result.left_out.append(LeftOut(sub_id, entry, str(exc)))
                continue
            if submission.type != kind:
                message = (
                    f"{submission.root / 'metadata.json'}: type is '{submission.type}' but it was given as a {kind}; "
                    f"move it to the {submission.type} folder"
                )
                result.left_out.append(LeftOut(sub_id, entry, message))
                continue
            result.submissions.append(submission)
    return result


def _check_member_path(archive: Path, name: str) -> PurePosixPath:
    member = PurePosixPath(name)
    if member.is_absolute() or ".." in member.parts or name.startswith(("/", "\\")) or "\\" in name:
        raise SubmissionError(f"{archive}: unsafe path '{name}' in the archive; package with relative paths only")
    return member


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpacks refusing absolute and `..` paths, links, special files and archives too large to be honest."""
    dest.mkdir(parents=True)
    if archive.name.endswith(".zip"):
        _unpack_zip(archive, dest)
    else:
        _unpack_tar(archive, dest)


def _check_totals(archive: Path, count: int, total: int) -> None:
    if count > MAX_ARCHIVE_FILES:
        raise SubmissionError(f"{archive}: {count} files, more than {MAX_ARCHIVE_FILES}; ship fewer files")
    if total > MAX_ARCHIVE_BYTES:
        raise SubmissionError(f"{archive}: unpacks to {total} bytes, more than {MAX_ARCHIVE_BYTES}; ship less")


def _unpack_zip(archive: Path, dest: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_totals(archive, len(infos), sum(info.file_size for info in infos))
            for info in infos:
                member = _check_member_path(archive, info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode) or (mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))):
                    raise SubmissionError(f"{archive}: '{info.filename}' is a link or special file; ship regular files")
                target = dest / member
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                target.chmod(0o755 if mode & 0o111 else 0o644)
    except zipfile.BadZipFile as exc:
        raise SubmissionError(f"{archive}: not a readable zip archive ({exc}); re-create it") from None


def _unpack_tar(archive: Path, dest: Path) -> None:
    try:
        with tarfile.open(archive, "r:*") as tf:
            members = tf.getmembers()
            _check_totals(archive, len(members), sum(m.size for m in members))
            for member in members:
                _check_member_path(archive, member.name)
                if not (member.isreg() or member.isdir()):
                    raise SubmissionError(f"{archive}: '{member.name}' is a link or special file; ship regular files")
            tf.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise SubmissionError(f"{archive}: not a readable tar archive ({exc}); re-create it") from None
