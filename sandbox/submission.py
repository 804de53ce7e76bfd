"""Submissions: a folder or an archive with `metadata.json`, an entry point and code (docs/contract.md).

`admit` is the one place that decides whether a submission takes part; the run, `sandbox validate` and the
organizer intake all call it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from sandbox.archives import ARCHIVE_SUFFIXES, archive_problems, is_archive, is_image_archive, unpack_archive
from sandbox.errors import SandboxError, SubmissionError, one_line
from sandbox.store import sha256_file

SubmissionType = Literal["attack", "targeted_attack", "defense"]
Level = Literal["error", "warning"]
INSIDE = "name a file inside the submission, relative to metadata.json"


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
    input_size: tuple[int, int] | None = None  # (width, height) of the images it reads; checked against the data set

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


@dataclass(frozen=True)
class Submission:
    """A loaded, checked submission. `id` is its folder or archive name, as in the 2017 toolkit."""

    id: str
    root: Path
    metadata: Metadata
    warnings: tuple[str, ...] = ()
    sha256: str = ""  # of the archive as received, or of the folder's files: a changed submission is re-run
    name: str | None = None  # from the organizers' submissions.csv, over metadata.json's name
    team: str | None = None

    @property
    def type(self) -> SubmissionType:
        return self.metadata.type

    @property
    def display_name(self) -> str:
        return self.name or self.metadata.name or self.id

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
    name = path.name if path.name not in ("", ".", "..") else path.resolve().name  # `sandbox validate .`
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


def _validation_error(path: Path, error: ValidationError) -> SubmissionError:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "(document)"
    fix = ""
    if first["type"] == "literal_error":
        fix = "use one of attack, targeted_attack, defense"
    elif first["type"] == "missing":
        fix = "add it"
    return SubmissionError(path, f"field '{where}': {first['msg']}", fix)


MAX_METADATA_BYTES = 1024**2


def read_metadata(path: Path) -> Metadata:
    try:
        if path.stat().st_size > MAX_METADATA_BYTES:
            raise SubmissionError(path, f"larger than {MAX_METADATA_BYTES // 1024} KiB", "keep metadata.json short")
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise SubmissionError(path, "missing", "every submission needs metadata.json at its root") from None
    except ValueError as exc:  # not UTF-8, not JSON, or a number of more than 4,300 digits
        raise SubmissionError(path, f"not valid JSON ({one_line(exc)})", "fix the syntax") from None
    except RecursionError:
        raise SubmissionError(path, "nested too deeply to read", "use a flat JSON object") from None
    if not isinstance(data, dict):
        raise SubmissionError(path, "not a JSON object", "write an object with type, container and entry_point")
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a `\ud800` escape decodes to half a character, which no file can hold
        raise SubmissionError(
            path, "holds a lone surrogate escape (\\ud800-\\udfff), which is no character", "remove it"
        ) from None
    try:
        return Metadata.model_validate(data)
    except ValidationError as exc:
        raise _validation_error(path, exc) from None


def find_root(folder: Path) -> Path:
    """metadata.json sits at the root, or inside the archive's single top-level folder."""
    if (folder / "metadata.json").is_file():
        return folder
    entries = [entry for entry in folder.iterdir() if not entry.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        if (entries[0] / "metadata.json").is_file():
            return entries[0]
    raise SubmissionError(folder, "no metadata.json at the root", "put it beside the entry point")


def check_entry_point(root: Path, entry_point: str) -> None:
    """The entry point is a regular, executable file inside the submission (the kernel runs it directly)."""
    metadata_path = root / "metadata.json"
    relative = PurePosixPath(entry_point)
    if relative.is_absolute() or ".." in relative.parts or not entry_point.strip():
        raise SubmissionError(metadata_path, f"entry_point '{entry_point}' is outside the submission", INSIDE)
    target = root / relative
    if target.is_symlink() or not target.is_file():
        raise SubmissionError(metadata_path, f"entry_point '{entry_point}' is not a file in the submission", INSIDE)
    if not os.access(target, os.X_OK):
        raise SubmissionError(target, "entry point is not executable", f"run `chmod +x {entry_point}`")


def shebang_problem(path: Path) -> SubmissionError | None:
    """The kernel runs the entry point: a script needs `#!` and LF line ends on that line."""
    with path.open("rb") as f:
        head = f.read(256)  # not the whole file: an entry point may be gigabytes
    if head.startswith(b"\x7fELF"):
        return None
    if not head.startswith(b"#!"):
        fix = "start it with `#!/bin/sh` (or `#!/usr/bin/env python3`)"
        return SubmissionError(path, "no #! line, so it cannot be executed", fix)
    if b"\r" in head.split(b"\n", 1)[0]:
        fix = "convert the file with `dos2unix`"
        return SubmissionError(path, "its #! line ends in CRLF, so the interpreter is not found", fix)
    return None


@dataclass(frozen=True)
class Finding:
    """One thing admission or a trial found: an error leaves the submission out (or fails it), a warning is
    repaired or ignored by the run."""

    level: Level
    where: str
    problem: str
    fix: str = ""

    @classmethod
    def of(cls, error: SandboxError, level: Level = "error") -> Finding:
        return cls(level, error.where, error.problem, error.fix)

    @property
    def message(self) -> str:
        return f"{self.problem}; {self.fix}" if self.fix else self.problem

    def line(self) -> str:
        return f"{self.level}: {self.where}: {self.message}"

    def error(self) -> SubmissionError:
        return SubmissionError(self.where, self.problem, self.fix)


class Findings:
    """Errors and warnings of a list of findings; shared by an admission and `sandbox validate`'s report."""

    findings: list[Finding]

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]


@dataclass
class Admission(Findings):
    """What admitting one submission found: the submission when no error stops it, and every finding."""

    id: str
    path: Path
    type: SubmissionType | None = None
    submission: Submission | None = None
    findings: list[Finding] = field(default_factory=list)

    def refuse(self, error: SandboxError) -> Admission:
        self.findings.append(Finding.of(error))
        return self

    def refusal(self) -> SubmissionError:
        """The one line a refused submission is left out with: its first error, and how many more there are."""
        first, more = self.errors[0], len(self.errors) - 1
        return SubmissionError(first.where, first.problem + (f" (and {more} more problems)" if more else ""), first.fix)


def _unpacked_folder(path: Path, unpack_dir: Path | None, sub_id: str) -> tuple[Path, str | None]:
    """The folder that holds the submission, unpacked from an archive when needed, and its saved image if any."""
    if not (is_archive(path) or is_image_archive(path)):
        if not path.is_dir():
            raise SubmissionError(path, "not a folder or a .zip/.tar.gz archive", "package it with `sandbox package`")
        return path, None
    if unpack_dir is None:
        raise SubmissionError(path, "archives need a folder to unpack into", "pass unpack_dir")
    folder = unpack_dir / sub_id
    if folder.exists():
        shutil.rmtree(folder)
    if is_image_archive(path):
        from sandbox.submission_image import load_image_submission  # needs Docker: imported only for images

        return load_image_submission(path, folder)
    unpack_archive(path, folder)
    return folder, None


def admit(path: Path, unpack_dir: Path | None = None, kind: SubmissionType | None = None) -> Admission:
    """Every check that decides whether a submission takes part, in one place: `sandbox run` leaves out what it
    refuses, `sandbox validate` reports every finding. Never raises for a problem of the submission itself.

    Archives are unpacked safely into `unpack_dir`; `kind`, when given, is the type the submission was given as.
    """
    path = Path(path)
    try:
        return _admit(path, unpack_dir, kind)
    except SandboxError:
        raise  # the host's (Docker unreachable while loading a saved image), not the submission's
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise  # a full disk while unpacking: the host's
        return Admission(submission_id(path), path).refuse(_unreadable(path, exc))
    except Exception as exc:  # noqa: BLE001 - whatever a crafted file makes a library raise
        return Admission(submission_id(path), path).refuse(_unreadable(path, exc))


def _unreadable(path: Path, exc: BaseException) -> SubmissionError:
    """A submission that a library could not read (a bad CRC, an encrypted zip, an odd tar header): one line."""
    fix = "package it again as a plain .zip or .tar.gz of its folder (`sandbox package`)"
    return SubmissionError(path, f"cannot be read ({type(exc).__name__}: {one_line(exc)})", fix)


def _admit(path: Path, unpack_dir: Path | None, kind: SubmissionType | None) -> Admission:
    admission = Admission(submission_id(path), path)
    if not path.exists():
        return admission.refuse(SubmissionError(path, "no such file or folder", "check the path"))
    problem = id_problem(admission.id)
    if problem:
        return admission.refuse(SubmissionError(path, problem, "rename it"))
    if is_archive(path):
        admission.findings.extend(Finding.of(error) for error in archive_problems(path))
        if admission.errors:
            return admission
    try:
        folder, image = _unpacked_folder(path, unpack_dir, admission.id)
        root = find_root(folder)
        metadata = read_metadata(root / "metadata.json")
    except SubmissionError as exc:
        return admission.refuse(exc)
    admission.type = metadata.type
    for name in metadata.unknown_fields():
        admission.findings.append(
            Finding("warning", str(root / "metadata.json"), f"unknown field '{name}' is kept and ignored")
        )
    if kind is not None and metadata.type != kind:
        fix = f"move it to the {metadata.type} folder"
        return admission.refuse(
            SubmissionError(root / "metadata.json", f"type is '{metadata.type}' but it was given as a {kind}", fix)
        )
    try:
        check_entry_point(root, metadata.entry_point)
    except SubmissionError as exc:
        return admission.refuse(exc)
    shebang = shebang_problem(root / metadata.entry_point)
    if shebang is not None:
        admission.refuse(shebang)
    unreadable = unreadable_files(root)
    if unreadable:
        fix = f"run `chmod -R a+rX {root}`"
        admission.refuse(SubmissionError(unreadable[0], "not readable by the container's user", fix))
    if admission.errors:
        return admission
    if image is not None:  # a saved submission image runs as itself, whatever base its metadata names
        metadata = metadata.model_copy(update={"container": image, "container_gpu": None})
    warnings = tuple(finding.line().removeprefix("warning: ") for finding in admission.warnings)
    admission.submission = Submission(admission.id, root.resolve(), metadata, warnings, content_digest(path))
    return admission


def content_digest(path: Path) -> str:
    """SHA-256 of an archive's bytes, or of a folder's files (relative names and contents, links as their
    targets' names): what identifies one version of a submission."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for entry in sorted(path.rglob("*")):
        relative = entry.relative_to(path).as_posix().encode("utf-8", "surrogateescape")
        if entry.is_symlink():
            digest.update(b"L" + relative + b"\0" + os.readlink(entry).encode("utf-8", "surrogateescape") + b"\0")
        elif entry.is_file():
            digest.update(b"F" + relative + b"\0" + bytes.fromhex(sha256_file(entry)))
    return digest.hexdigest()


def size_problem(submission: Submission, size: tuple[int, int]) -> SubmissionError | None:
    """A submission that declares `input_size` runs only on a data set of that size (e.g. an ImageNet model on
    299x299 images): refused with one line rather than failing every piece."""
    declared = submission.metadata.input_size
    if declared is None or tuple(declared) == tuple(size):
        return None
    problem = f"input_size {declared[0]}x{declared[1]}, but the data set's images are {size[0]}x{size[1]}"
    return SubmissionError(submission.root / "metadata.json", problem, "run it on a data set of its size")


def load_submission(path: Path, unpack_dir: Path | None = None, kind: SubmissionType | None = None) -> Submission:
    """Admits one submission folder or archive, or raises its first error (`admit` gives them all)."""
    admission = admit(path, unpack_dir, kind)
    if admission.submission is None:
        raise admission.refusal()
    return admission.submission


def load_submissions(
    folders: list[Path], kind: SubmissionType, unpack_dir: Path | None, taken: dict[str, str] | None = None
) -> SubmissionSet:
    """Admits every submission in the given folders; those refused are left out with a reason, the rest go on.

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
        for entry in submission_entries(folder):
            sub_id = submission_id(entry)
            duplicate = duplicate_id(entry, seen, kind)
            if duplicate is not None:
                result.left_out.append(duplicate)
                continue
            seen[sub_id] = kind
            try:
                result.submissions.append(load_submission(entry, unpack_dir, kind))
            except SubmissionError as exc:
                result.left_out.append(LeftOut(sub_id, entry, str(exc)))
    return result


def submission_entries(folder: Path) -> list[Path]:
    """The entries of a folder of submissions that can be one: folders and archives, hidden ones skipped."""
    return [
        entry
        for entry in sorted(folder.iterdir())
        if not entry.name.startswith(".") and (entry.is_dir() or is_archive(entry) or is_image_archive(entry))
    ]


def duplicate_id(entry: Path, taken: dict[str, str], kind: str | None) -> LeftOut | None:
    """An id names a submission in every score file and store key: one already taken in this run, in any kind,
    is refused for the second entry (before it is unpacked). `kind` is None when it is not known yet."""
    sub_id = submission_id(entry)
    if sub_id not in taken:
        return None
    other = "" if kind is None or taken[sub_id] == kind else f" as {_article(taken[sub_id])} {taken[sub_id]}"
    message = f"{entry}: a submission with id '{sub_id}' was already loaded{other}; rename one of them"
    return LeftOut(sub_id, entry, message)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


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
