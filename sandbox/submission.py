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
    for suffix in (*ARCHIVE_SUFFIXES, ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def id_problem(sub_id: str) -> str | None:
    """Ids appear verbatim in the NIPS 2017 CSVs, logs and reports: refuse the few that a spreadsheet would run as a
    formula or a terminal would run as a control sequence. Spaces, quotes, markup and non-ASCII are fine."""
    if not sub_id.strip():
        return "an empty id"
    if sub_id[0] in "=+-@":
        return f"its id starts with '{sub_id[0]}', which spreadsheets read as a formula"
    if any(ord(ch) < 32 or 0x7F <= ord(ch) < 0xA0 for ch in sub_id):
        return "its id holds a control character"
    return None


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def is_image_archive(path: Path) -> bool:
    """A `docker save` tar of a submission image (`sandbox package --image --save`)."""
    return path.is_file() and path.name.endswith(".tar")


def _format_validation_error(path: Path, error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(document)"
    expected = ""
    if first["type"] == "literal_error":
        expected = "; use one of attack, targeted_attack, defense"
    elif first["type"] == "missing":
        expected = "; add it"
    return f"{path}: field '{where}': {first['msg']}{expected}"


MAX_METADATA_BYTES = 1024**2


def read_metadata(path: Path) -> Metadata:
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise SubmissionError(f"{path}: larger than {MAX_METADATA_BYTES // 1024} KiB; keep metadata.json short")
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise SubmissionError(f"{path}: missing; every submission needs metadata.json at its root") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SubmissionError(f"{path}: not valid JSON ({exc}); fix the syntax") from None
    except RecursionError:
        raise SubmissionError(f"{path}: nested too deeply to read; use a flat JSON object") from None
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
    image = None
    if is_archive(path) or is_image_archive(path):
        if unpack_dir is None:
            raise SubmissionError(f"{path}: archives need a folder to unpack into")
        folder = unpack_dir / sub_id
        if folder.exists():
            shutil.rmtree(folder)
        if is_image_archive(path):
            from sandbox.submission_image import load_image_submission

            folder, image = load_image_submission(path, folder)
        else:
            unpack_archive(path, folder)
    elif path.is_dir():
        folder = path
    else:
        raise SubmissionError(f"{path}: not a folder or a .zip/.tar.gz archive")
    root = find_root(folder)
    metadata = read_metadata(root / "metadata.json")
    check_entry_point(root, metadata.entry_point)
    unreadable = unreadable_files(root)
    if unreadable:
        raise SubmissionError(f"{unreadable[0]}: not readable by the container's user; run `chmod -R a+rX {root}`")
    if image is not None:  # a saved submission image runs as itself, whatever base its metadata names
        metadata = metadata.model_copy(update={"container": image, "container_gpu": None})
    warnings = tuple(
        f"{root / 'metadata.json'}: unknown field '{name}' kept and ignored" for name in metadata.unknown_fields()
    )
    return Submission(id=sub_id, root=root.resolve(), metadata=metadata, warnings=warnings)


def load_submissions(
    folders: list[Path], kind: SubmissionType, unpack_dir: Path | None, taken: dict[str, str] | None = None
) -> SubmissionSet:
    """Loads every submission in the given folders; bad ones are left out with a reason, the rest go on.

    `taken` maps the ids already loaded in this run to their kind: an id is a submission's name in every score
    file and store key, so one used twice, in any kinds, is refused for the second (before it is unpacked).
    """
    result = SubmissionSet()
    seen: dict[str, str] = taken if taken is not None else {}
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            result.left_out.append(LeftOut(folder.name, folder, f"{folder}: no such folder of {kind} submissions"))
            continue
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith(".") or not (entry.is_dir() or is_archive(entry) or is_image_archive(entry)):
                continue
            sub_id = submission_id(entry)
            problem = id_problem(sub_id)
            if problem:
                result.left_out.append(LeftOut(sub_id, entry, f"{entry}: {problem}; rename it"))
                continue
            if sub_id in seen:
                other = (
                    "" if seen[sub_id] == kind else f" as {'an' if seen[sub_id][0] in 'aeiou' else 'a'} {seen[sub_id]}"
                )
                message = f"{entry}: a submission with id '{sub_id}' was already loaded{other}; rename one of them"
                result.left_out.append(LeftOut(sub_id, entry, message))
                continue
            seen[sub_id] = kind
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


def _unsafe_path(name: str) -> bool:
    member = PurePosixPath(name)
    return member.is_absolute() or ".." in member.parts or name.startswith(("/", "\\")) or "\\" in name


def archive_problems(archive: Path) -> list[str]:
    """Every reason not to unpack an archive, one line each: unsafe paths, links, special files, size."""
    problems: list[str] = []
    try:
        if archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                entries = [(i.filename, i.external_attr >> 16, i.file_size) for i in zf.infolist()]
            kinds = {name: _zip_kind(mode) for name, mode, _ in entries}
        else:
            with tarfile.open(archive, "r:*") as tf:
                members = tf.getmembers()
            entries = [(m.name, 0, m.size) for m in members]
            kinds = {
                m.name: "file"
                if m.isreg()
                else "folder"
                if m.isdir()
                else "link"
                if m.issym() or m.islnk()
                else "special file"
                for m in members
            }
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as exc:
        return [f"{archive}: not a readable archive ({exc}); re-create it with `sandbox package`"]
    for name, _, _ in entries:
        if _unsafe_path(name):
            problems.append(f"{archive}: unsafe path '{name}'; package with relative paths only (`sandbox package`)")
        elif kinds[name] in ("link", "special file"):
            problems.append(f"{archive}: '{name}' is a {kinds[name]}; ship regular files only")
    if len(entries) > MAX_ARCHIVE_FILES:
        problems.append(f"{archive}: {len(entries)} files, more than {MAX_ARCHIVE_FILES}; ship fewer files")
    total = sum(size for _, _, size in entries)
    if total > MAX_ARCHIVE_BYTES:
        problems.append(f"{archive}: unpacks to {total} bytes, more than {MAX_ARCHIVE_BYTES}; ship less")
    return problems


def _zip_kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "link"
    if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return "special file"
    return "folder" if stat.S_ISDIR(mode) else "file"


def unpack_archive(archive: Path, dest: Path) -> None:
    """Unpacks after `archive_problems` found nothing: no absolute or `..` paths, links or special files."""
    problems = archive_problems(archive)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise SubmissionError(problems[0] + more)
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


def unreadable_files(root: Path) -> list[Path]:
    """Files and folders the container's user (65534, 'other') could not read."""
    bad = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        needed = stat.S_IROTH | (stat.S_IXOTH if path.is_dir() else 0)
        if mode & needed != needed:
            bad.append(path)
    return bad
