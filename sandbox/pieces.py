"""Running one work piece: plain data in, plain data out, so any executor (threads, a cluster) can call it.

An attack piece feeds the batch's clean images under opaque names, runs the attack, then reads every output
image safely, clips it to the epsilon ball and hashes it. A defense piece gets its chunk of distinct adversarial
images under opaque names (a folder shared by every defense holding that chunk) and parses `result.csv`. The
reading, clipping and parsing is the piece's `finish`, done where the executor says (`Ran`).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from sandbox.dataset import DataSet
from sandbox.outputs_read import clip_to_epsilon, decode_image, encode_png, parse_result_csv, pixel_hash
from sandbox.plan import AttackPiece, DefensePiece
from sandbox.runtime.base import ContainerJob, JobOutcome, Limits, Runtime
from sandbox.store import AdversarialRecord, PieceRecord, write_atomically
from sandbox.submission import Submission

R = TypeVar("R")


@dataclass(frozen=True)
class RunContext:
    """What every piece of a run shares: the run, its data set, its limits and the runtime that runs containers."""

    run_id: str
    run_dir: Path
    secret: str  # keys the opaque file names; never leaves the host
    limits: Limits
    dataset: DataSet
    runtime: Runtime
    use_gpu: bool = False
    weights: Path | None = None  # mounted read-only into every piece (docs/imagenet.md)


@dataclass
class AttackPieceResult:
    record: PieceRecord
    images: list[AdversarialRecord]
    pngs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> PNG of the clipped image


@dataclass
class DefensePieceResult:
    record: PieceRecord
    labels: dict[str, int | None]  # sha256 -> label, None when missing or invalid


class CleanImages:
    """Each clean image's pixels and re-encoded PNG, kept after first use: every attack piece of a run reads the
    same images, and decoding and encoding them again cost as much as the rest of the piece's own work at 28x28.
    Bounded in bytes, so an ImageNet-sized data set keeps only what fits."""

    def __init__(self, budget_bytes: int = 256 * 1024**2) -> None:
        self.budget = budget_bytes
        self._used = 0
        self._images: dict[tuple, tuple[np.ndarray, bytes]] = {}
        self._lock = threading.Lock()

    def get(self, dataset: DataSet, image_id: str) -> tuple[np.ndarray, bytes]:
        info = dataset.image_path(image_id).stat()  # a data set rebuilt in place is read afresh
        key = (str(dataset.root), image_id, info.st_mtime_ns, info.st_size)
        with self._lock:
            cached = self._images.get(key)
        if cached is not None:
            return cached
        pixels = dataset.load_pixels(image_id)
        pixels.setflags(write=False)  # shared between pieces: nobody may change it
        entry = (pixels, encode_png(pixels))
        with self._lock:
            size = pixels.nbytes + len(entry[1])
            if self._used + size <= self.budget:
                self._images[key] = entry
                self._used += size
        return entry


CLEAN_IMAGES = CleanImages()


@functools.lru_cache(maxsize=1 << 17)  # a defense's 8,000 names are asked for again by each piece holding them
def opaque_name(secret: str, scope: str, key: str) -> str:
    """The file name of `key` (an ImageId, an image's hash) among the inputs named in `scope` (a piece, a batch, a
    run's defense inputs): stable across resumes (so seeded submissions give the same scores), unguessable without
    the secret."""
    digest = hmac.new(secret.encode(), f"{scope}\0{key}".encode(), hashlib.sha256).hexdigest()
    return f"{digest[:20]}.png"


def _work_dir(ctx: RunContext, piece_id: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", piece_id)
    path = ctx.run_dir / "work" / f"{slug}-{uuid.uuid4().hex[:8]}"
    (path / "input").mkdir(parents=True)
    path.chmod(0o755)
    (path / "input").chmod(0o755)
    return path


def _clean_file(ctx: RunContext, image_id: str, png: bytes) -> Path:
    """The clean image's PNG in the run folder, written once per run and hard-linked into each attack's input
    folder: creating a file costs ten times a link here. Named by the run's secret, never by the ImageId."""
    path = ctx.run_dir / "clean" / opaque_name(ctx.secret, "clean", image_id)
    if not path.exists():
        write_atomically(path, png, durable=False)  # a cache: `run_competition` starts it afresh every time
        path.chmod(0o444)  # readable by the container's user whatever the host's umask
    return path


def _place_input(source: Path, target: Path) -> None:
    """An input file: a hard link costs no copy (the input folder is mounted read-only, so the container cannot
    change it); a copy where links fail. Readable by the container's user whatever the host's umask."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)
    target.chmod(0o444)


def _environment(ctx: RunContext, seed: int) -> dict[str, str]:
    threads = str(ctx.limits.threads())
    return {
        "SANDBOX_SEED": str(seed),
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        # Which labels a defense writes (ImageNet: 1..1000 for the NIPS 2017 sets, 0..999 otherwise).
        **({"SANDBOX_LABEL_CONVENTION": ctx.dataset.label_convention} if ctx.dataset.label_convention else {}),
    }


def _job(
    ctx: RunContext,
    piece_id: str,
    seed: int,
    submission: Submission,
    input_dir: Path,
    output_mount: str,
    args: tuple[str, ...],
    time_limit: float,
    gpu: str | None,
) -> ContainerJob:
    return ContainerJob(
        run_id=ctx.run_id,
        piece_id=piece_id,
        image=submission.image(ctx.use_gpu and gpu is not None),
        code_dir=str(submission.root),
        entry_point=submission.metadata.entry_point,
        input_dir=str(input_dir),
        output_mount=output_mount,
        args=args,
        env=_environment(ctx, seed),
        time_limit_s=time_limit,
        limits=ctx.limits,
        gpus=gpu,
        weights_dir=str(ctx.weights) if ctx.weights else None,
    )


def _status(outcome: JobOutcome) -> str:
    return "ok" if outcome.error is None and not outcome.timed_out and outcome.exit_code == 0 else "failed"


@dataclass(frozen=True)
class PieceTiming:
    """When a piece held its worker (from writing its inputs to reading its outputs back) and which worker it was;
    the report's timeline draws these. Finishing the piece (decoding, clipping, parsing) comes after, elsewhere."""

    worker: str
    started_at: float
    ended_at: float

    @classmethod
    def since(cls, started_at: float) -> PieceTiming:
        return cls(threading.current_thread().name, started_at, time.time())


@dataclass(frozen=True)
class Ran(Generic[R]):
    """A piece whose container has ended and whose outputs are read back, not yet made into its result.

    `finish()` does the rest (decoding, clipping and hashing images, parsing labels): plain computation that needs
    no worker, so a run on this machine does it on the thread that stores results, while the worker already runs
    the next container (`competition._run_phase`); on a cluster the worker finishes its own pieces."""

    finish: Callable[[], R]


def _piece_record(
    piece_id: str,
    kind: str,
    submission_id: str,
    n_images: int,
    epsilon: int | None,
    outcome: JobOutcome,
    timing: PieceTiming,
    finish_started: float,
    time_limit_s: float,
    failed_images: int,
    clipped_pixels: int = 0,
    bad_lines: int = 0,
) -> PieceRecord:
    return PieceRecord(
        piece_id=piece_id,
        kind=kind,
        submission_id=submission_id,
        status=_status(outcome),
        n_images=n_images,
        epsilon=epsilon,
        exit_code=outcome.exit_code,
        timed_out=outcome.timed_out,
        oom_killed=outcome.oom_killed,
        wall_s=round(outcome.wall_s, 3),
        total_s=round(timing.ended_at - timing.started_at + time.time() - finish_started, 3),
        time_limit_s=time_limit_s,
        failed_images=failed_images,
        clipped_pixels=clipped_pixels,
        bad_lines=bad_lines,
        skipped_files=",".join(sorted(outcome.skipped_files))[:2000],  # names, for the report; may be cut
        skipped_count=len(outcome.skipped_files),
        isolation=outcome.isolation,
        error=outcome.error,
        stdout_tail=outcome.stdout_tail,
        stderr_tail=outcome.stderr_tail,
        started_at=round(timing.started_at, 3),
        ended_at=round(timing.ended_at, 3),
        worker=timing.worker,
    )


@dataclass
class AttackExecution:
    """What an attack wrote, raw, before any clipping; `names` maps ImageId -> the opaque input file name."""

    outcome: JobOutcome
    names: dict[str, str]
    clean: dict[str, np.ndarray]
    time_limit: float


def _write_attack_inputs(
    ctx: RunContext, folder: Path, image_ids: tuple[str, ...], names: dict[str, str], targeted: bool
) -> dict[str, np.ndarray]:
    """Links each clean image into `folder` under its opaque name (and `target_class.csv` for a targeted attack);
    returns the clean pixels, which clipping needs."""
    records = ctx.dataset.by_id()
    # In the order of the opaque names, not the data set's: creation order shows in inode numbers and times.
    in_name_order = sorted(image_ids, key=names.__getitem__)
    clean: dict[str, np.ndarray] = {}
    for image_id in in_name_order:
        # Re-encoded from pixels: no text chunk or file name of the data set reaches the submission.
        clean[image_id], png = CLEAN_IMAGES.get(ctx.dataset, image_id)
        _place_input(_clean_file(ctx, image_id, png), folder / names[image_id])
    if targeted:
        lines = "".join(f"{names[i]},{records[i].target_class}\n" for i in in_name_order)
        (folder / "target_class.csv").write_text(lines)
        (folder / "target_class.csv").chmod(0o444)
    return clean


def _run_attack(
    piece: AttackPiece, submission: Submission, ctx: RunContext, input_dir: Path, gpu: str | None
) -> tuple[JobOutcome, float]:
    time_limit = ctx.limits.time_limit(len(piece.image_ids))
    args = ("{input}", "{output}", str(piece.epsilon))
    job = _job(ctx, piece.piece_id, piece.seed, submission, input_dir, "/output_images", args, time_limit, gpu)
    return ctx.runtime.run(job), time_limit


def execute_attack(
    piece: AttackPiece, submission: Submission, ctx: RunContext, gpu: str | None = None
) -> AttackExecution:
    """Feeds the batch under opaque names of its own and runs the attack; for `sandbox validate` (a run's attack
    pieces of one batch share their input folder: `shared_attack_inputs`)."""
    work = _work_dir(ctx, piece.piece_id)
    try:
        names = {image_id: opaque_name(ctx.secret, piece.piece_id, image_id) for image_id in piece.image_ids}
        clean = _write_attack_inputs(ctx, work / "input", piece.image_ids, names, piece.targeted)
        outcome, time_limit = _run_attack(piece, submission, ctx, work / "input", gpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return AttackExecution(outcome, names, clean, time_limit)


def shared_attack_inputs(ctx: RunContext, piece: AttackPiece) -> tuple[Path, dict[str, str]]:
    """The input folder of a batch of clean images, written once per run and mounted read-only into every attack
    piece on that batch (targeted attacks get their own, with `target_class.csv`), and {ImageId: opaque name}."""
    kind = "targeted" if piece.targeted else "untargeted"
    content = hashlib.sha256("\0".join((kind, *piece.image_ids)).encode()).hexdigest()[:16]
    names = {image_id: opaque_name(ctx.secret, f"attack-inputs/{content}", image_id) for image_id in piece.image_ids}

    def write(folder: Path) -> None:
        _write_attack_inputs(ctx, folder, piece.image_ids, names, piece.targeted)

    return _shared_folder(ctx, "attack-inputs", content, write), names


def run_attack_piece(
    piece: AttackPiece, submission: Submission, ctx: RunContext, gpu: str | None = None
) -> Ran[AttackPieceResult]:
    """Runs the attack; finishing it clips, hashes and records every image it wrote (what it did not write has
    failed)."""
    started = time.time()
    folder, names = shared_attack_inputs(ctx, piece)
    outcome, time_limit = _run_attack(piece, submission, ctx, folder, gpu)
    return Ran(partial(_finish_attack, piece, ctx, outcome, names, time_limit, PieceTiming.since(started)))


def _finish_attack(
    piece: AttackPiece,
    ctx: RunContext,
    outcome: JobOutcome,
    names: dict[str, str],
    time_limit: float,
    timing: PieceTiming,
) -> AttackPieceResult:
    finish_started = time.time()
    dataset = ctx.dataset
    images, pngs = [], {}
    failed = clipped_total = 0
    for image_id in piece.image_ids:
        clean, _ = CLEAN_IMAGES.get(dataset, image_id)  # cached when its input was written (else read again)
        pixels = decode_image(outcome.files.get(names[image_id], b""), dataset.size, dataset.mode)
        if pixels is None:
            pixels, is_failed, clipped = clean, True, 0
            failed += 1
        else:
            pixels, clipped = clip_to_epsilon(pixels, clean, piece.epsilon)
            is_failed = False
        clipped_total += clipped
        sha = pixel_hash(pixels)
        if sha not in pngs:
            pngs[sha] = encode_png(pixels)
        images.append(AdversarialRecord(piece.submission_id, image_id, sha, piece.epsilon, is_failed, clipped))
    kind = "targeted_attack" if piece.targeted else "attack"
    record = _piece_record(
        piece.piece_id,
        kind,
        piece.submission_id,
        len(piece.image_ids),
        piece.epsilon,
        outcome,
        timing,
        finish_started,
        time_limit,
        failed,
        clipped_pixels=clipped_total,
    )
    return AttackPieceResult(record, images, pngs)


def execute_defense(
    piece_id: str,
    seed: int,
    submission: Submission,
    ctx: RunContext,
    inputs: Mapping[str, Path | bytes],
    gpu: str | None = None,
) -> tuple[JobOutcome, dict[str, str], float]:
    """Feeds `inputs` (key -> a PNG file to copy, or PNG bytes) under opaque names and runs the defense.

    Returns the outcome, {opaque name: key} and the time limit; for `sandbox validate` and tests (a run's pieces
    share their input folders: `shared_defense_inputs`).
    """
    work = _work_dir(ctx, piece_id)
    try:
        by_name: dict[str, str] = {}
        for key, source in inputs.items():
            name = opaque_name(ctx.secret, piece_id, key)
            by_name[name] = key
            target = work / "input" / name
            if isinstance(source, bytes):
                target.write_bytes(source)
                target.chmod(0o444)  # readable by the container's user whatever the host's umask
            else:
                _place_input(source, target)
        outcome, time_limit = _run_defense(piece_id, seed, submission, ctx, work / "input", len(by_name), gpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return outcome, by_name, time_limit


def _run_defense(
    piece_id: str, seed: int, submission: Submission, ctx: RunContext, input_dir: Path, n: int, gpu: str | None
) -> tuple[JobOutcome, float]:
    time_limit = ctx.limits.time_limit(n)
    args = ("{input}", "{output}/result.csv")
    job = _job(ctx, piece_id, seed, submission, input_dir, "/output_data", args, time_limit, gpu)
    return ctx.runtime.run(job), time_limit


_SHARED_INPUTS_LOCK = threading.Lock()


def _shared_folder(ctx: RunContext, kind: str, content: str, write: Callable[[Path], None]) -> Path:
    """`work/KIND/CONTENT` in the run folder, written once by `write` and shared by every piece that needs the same
    inputs. Written in a temporary folder and renamed into place, so it is whole or absent, also with pieces on
    several machines of a cluster; pieces on this machine wait for the first to write it."""
    folder = ctx.run_dir / "work" / kind / content
    with _SHARED_INPUTS_LOCK:
        if not folder.is_dir():
            building = folder.with_name(f".{content}-{uuid.uuid4().hex[:8]}")
            building.mkdir(parents=True)
            building.chmod(0o755)
            write(building)
            try:
                building.rename(folder)
            except OSError:  # another machine of the cluster wrote it meanwhile: the same names, the same files
                shutil.rmtree(building, ignore_errors=True)
    return folder


def _defense_input_name(ctx: RunContext, sha: str) -> str:
    """One name per image for the whole run, keyed by the run's secret: a folder of a defense's inputs is then a
    set of links any piece can mount whole."""
    return opaque_name(ctx.secret, "defense-input", sha)


def _every_image_folder(ctx: RunContext) -> Path:
    return ctx.run_dir / "work" / "defense-inputs" / "every-image"


def add_defense_inputs(ctx: RunContext, image_hashes, adversarial_path, exactly: bool = False) -> None:
    """Links stored images into the run's folder of every distinct image, as attack pieces are stored (on the
    thread that stores them, while the workers run containers), so the usual defense piece, which holds every
    distinct image, finds its inputs written. `exactly`: the images are all there are now, and the folder is made
    to hold those and no other (a resume after a kill between storing and linking, or a resubmission's dropped
    images), before any defense piece starts."""
    folder = _every_image_folder(ctx)
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    wanted = {_defense_input_name(ctx, sha): sha for sha in image_hashes}
    present = set(os.listdir(folder)) if exactly else set()
    for name, sha in wanted.items():
        if name not in present and not (folder / name).exists():
            _place_input(adversarial_path(sha), folder / name)
    for name in present - wanted.keys():  # only with `exactly`: else nothing is listed
        (folder / name).unlink()


def shared_defense_inputs(ctx: RunContext, image_hashes: tuple[str, ...], adversarial_path) -> tuple[Path, dict]:
    """The read-only input folder of a defense piece's distinct images and {opaque name: sha256}: the run's folder
    of every distinct image when the piece holds exactly those (the usual case: one piece per defense), else a
    folder of the chunk, written once per run and shared by every defense holding that chunk.

    Writing 8,000 links per piece cost a defense piece 0.3-0.6 s of its worker's time. The names are keyed by the
    run's secret: they say nothing about an image, and no piece can change the folder."""
    by_name = {_defense_input_name(ctx, sha): sha for sha in image_hashes}
    every = _every_image_folder(ctx)
    if every.is_dir() and set(os.listdir(every)) == set(by_name):
        return every, by_name
    content = hashlib.sha256("".join(image_hashes).encode()).hexdigest()[:16]

    def write(folder: Path) -> None:
        for name, sha in by_name.items():
            _place_input(adversarial_path(sha), folder / name)

    return _shared_folder(ctx, "defense-inputs", content, write), by_name


def run_defense_piece(
    piece: DefensePiece, submission: Submission, ctx: RunContext, adversarial_path, gpu: str | None = None
) -> Ran[DefensePieceResult]:
    """Runs the defense; finishing it reads its labels. `adversarial_path(sha256)` gives the stored PNG of an image
    (the store's layout, passed in as data)."""
    started = time.time()
    folder, by_name = shared_defense_inputs(ctx, piece.image_hashes, adversarial_path)
    outcome, time_limit = _run_defense(piece.piece_id, piece.seed, submission, ctx, folder, len(by_name), gpu)
    timing = PieceTiming.since(started)
    return Ran(partial(_finish_defense, piece, ctx, outcome, by_name, time_limit, timing))


def _finish_defense(
    piece: DefensePiece,
    ctx: RunContext,
    outcome: JobOutcome,
    by_name: dict[str, str],
    time_limit: float,
    timing: PieceTiming,
) -> DefensePieceResult:
    finish_started = time.time()
    parsed, bad_lines = parse_result_csv(outcome.files.get("result.csv", b""), set(by_name))
    labels: dict[str, int | None] = {}
    for name, sha in by_name.items():
        label = parsed.get(name)
        labels[sha] = label if label is not None and 0 <= label < ctx.dataset.num_classes else None
    missing = sum(1 for label in labels.values() if label is None)
    record = _piece_record(
        piece.piece_id,
        "defense",
        piece.submission_id,
        len(piece.image_hashes),
        None,
        outcome,
        timing,
        finish_started,
        time_limit,
        missing,
        bad_lines=bad_lines,
    )
    return DefensePieceResult(record, labels)
