"""`run_competition`: plan -> run pieces -> store -> score -> report (docs/architecture.md).

The run folder holds everything: `manifest.json` (every setting), `store.sqlite` (results as pieces finish),
`adversarial/` (the clipped images) and the outputs. Running again with the same folder resumes it.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import platform
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from sandbox import __version__
from sandbox.bundled import default_dataset_dir, sample_dirs
from sandbox.dataset import DataSet, load_dataset
from sandbox.errors import HostFault, RuntimeUnavailable, SandboxError
from sandbox.executor import Executor, PieceRequest, Task, make_executor
from sandbox.executor.base import Messages
from sandbox.image_names import is_sandbox_image
from sandbox.intake import exclude, gather, track_versions
from sandbox.pieces import (
    AttackPieceResult,
    DefensePieceResult,
    Ran,
    RunContext,
    add_defense_inputs,
    run_attack_piece,
    run_defense_piece,
)
from sandbox.plan import AttackPiece, DefensePiece, piece_seed, plan_attack_pieces, plan_defense_pieces
from sandbox.reporting import build_results, write_nips_files, write_report_html, write_results
from sandbox.runtime import Limits, Runtime, make_runtime
from sandbox.runtime.base import default_workers, size_bytes
from sandbox.scoring import compute_scores
from sandbox.store import PieceRecord, RunStore, adversarial_image_path, sha256_file, write_atomically
from sandbox.submission import LeftOut, Submission, SubmissionSet, SubmissionType, size_problem


@dataclass(frozen=True)
class RunOptions:
    """Every option of `sandbox run`. None for a per-type folder list means the shipped samples, unless folders
    of received submissions (`submissions`, all types mixed) are given: then it means none."""

    attacks: tuple[Path, ...] | None = None
    targeted_attacks: tuple[Path, ...] | None = None
    defenses: tuple[Path, ...] | None = None
    submissions: tuple[Path, ...] = ()  # folders of received submissions of any type (organizer intake)
    exclude: tuple[str, ...] = ()  # ids taken out of the run: not run, not scored, their results kept
    drop_incomplete: bool = False  # rank without submissions that failed pieces (the NIPS 2017 organizers' rule)
    dataset: Path | None = None
    out: Path | None = None
    epsilon: tuple[int, ...] = (16,)
    batch_size: int = 100
    attack_piece_size: int = 1000
    defense_batch_size: int = 20_000  # at most this many distinct images in one defense piece
    seed: int = 0
    jobs: int | None = None  # None: one per core, as many as memory allows (`resolve_options`)
    gpus: str | None = None
    runtime: str = "docker"
    isolation: str = "runc"
    limits: Limits = field(default_factory=Limits)
    build_images: bool = True
    docker_wait: float = 300.0  # seconds a run waits for a daemon that stopped answering, then stops cleanly
    executor: str | Executor = "local"  # `local` (threads), `ray` (docs/scaling.md), or an executor object
    ray_address: str | None = None  # a Ray cluster to join; None with `ray`: a local instance for the run
    weights: Path | None = None  # model weights mounted read-only at /weights into every piece (docs/imagenet.md)

    def scoring_settings(self) -> dict:
        """The settings a resumed run must share with the first one, or its scores would mix two runs."""
        return {
            "epsilon": list(self.epsilon),
            "batch_size": self.batch_size,
            "attack_piece_size": self.attack_piece_size,
            "defense_batch_size": self.defense_batch_size,
            "seed": self.seed,
        }


class Events:
    """What a run reports as it goes; the CLI shows it, a library caller may ignore it."""

    def message(self, text: str) -> None: ...

    def warning(self, text: str) -> None: ...

    def phase(self, name: str, total: int, already_done: int) -> None: ...

    def piece_done(self, record: PieceRecord) -> None: ...


@dataclass
class RunResult:
    out: Path
    results: dict
    left_out: list[LeftOut]
    resumed_pieces: int

    @property
    def complete(self) -> bool:
        return not self.left_out and all(f["pieces_failed"] == 0 for f in self.results["failures"].values())


def default_out_dir() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def _load_all(options: RunOptions, out: Path) -> tuple[dict[str, SubmissionSet], DataSet]:
    dataset = load_dataset(options.dataset or default_dataset_dir())
    kinds: tuple[tuple[SubmissionType, tuple[Path, ...] | None], ...] = (
        ("attack", options.attacks),
        ("targeted_attack", options.targeted_attacks),
        ("defense", options.defenses),
    )
    samples = not options.submissions  # received submissions replace the samples
    per_kind = {
        kind: list(given) if given is not None else sample_dirs(kind) if samples else [] for kind, given in kinds
    }
    return gather(per_kind, list(options.submissions), out / "submissions"), dataset


def _leave_out(sets: dict[str, SubmissionSet], reason: Callable[[Submission], str | None]) -> None:
    """Moves every submission with a reason (one line) to the left-out list of its kind."""
    for subs in sets.values():
        keep = []
        for submission in subs.submissions:
            why = reason(submission)
            if why:
                subs.left_out.append(LeftOut(submission.id, submission.root, why))
            else:
                keep.append(submission)
        subs.submissions = keep


def _check_sizes(sets: dict[str, SubmissionSet], dataset: DataSet) -> None:
    """Leaves out the submissions that declare an input size other than the data set's."""
    _leave_out(sets, lambda s: str(problem) if (problem := size_problem(s, dataset.size)) else None)


def _check_images(runtime: Runtime, sets: dict[str, SubmissionSet], options: RunOptions, events: Events) -> None:
    """Builds the sandbox's own images when missing; leaves out submissions whose image cannot be found."""
    use_gpu = bool(options.gpus)
    images = [s.image(use_gpu) for subs in sets.values() for s in subs.submissions]
    problems = runtime.check(images)
    ours = [image for image in problems if is_sandbox_image(image)]
    if ours and options.build_images:
        from sandbox.images import TARGETS, build_images, image_tag

        events.message(f"building missing runtime images: {', '.join(ours)} (first run only)")
        build_images(tuple(t for t in TARGETS if image_tag(t) in ours), log=events.message)
        problems = runtime.check(images)
    _leave_out(sets, lambda s: f"{s.root}: {problems[s.image(use_gpu)]}" if s.image(use_gpu) in problems else None)


def _weights_record(folder: Path | None) -> dict | None:
    """The weights folder and the digest of every file in it: the same bytes for every submission, on record."""
    if folder is None:
        return None
    from sandbox.weights import check_folder, folder_digests

    path = check_folder(folder)
    return {"path": str(path), "sha256": folder_digests(path)}


def _manifest(
    options: RunOptions,
    run_id: str,
    dataset: DataSet,
    sets: dict[str, SubmissionSet],
    runtime: Runtime,
    added: dict[str, str],
    excluded: list[str],
) -> dict:
    """Every setting and every submission of the run (with its digest and when it joined): what a reader needs
    to reproduce the leaderboard."""
    return {
        "run_id": run_id,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "sandbox_version": __version__,
        "python": platform.python_version(),
        "host": platform.platform(),
        "settings": {
            **options.scoring_settings(),
            "jobs": options.jobs,
            "gpus": options.gpus,
            "runtime": options.runtime,
            "isolation": runtime.isolation(),
            "docker_wait_s": options.docker_wait,
            "limits": asdict(options.limits),
            "drop_incomplete": options.drop_incomplete,
            "executor": options.executor if isinstance(options.executor, str) else options.executor.name,
            "ray_address": options.ray_address,
        },
        "weights": _weights_record(options.weights),
        "dataset": {
            "path": str(dataset.root),
            "name": dataset.name,
            "images": len(dataset.records),
            "size": list(dataset.size),
            "mode": dataset.mode,
            "num_classes": dataset.num_classes,
            "csv_sha256": sha256_file(dataset.root / "dataset.csv"),
        },
        "submissions": {
            kind: [
                {
                    "id": s.id,
                    "name": s.display_name,
                    "team": s.team,
                    "sha256": s.sha256,
                    "added": added.get(s.id),
                    "path": str(s.root),
                    "container": s.image(bool(options.gpus)),
                    "entry_point": s.metadata.entry_point,
                    "source_model": s.metadata.source_model,
                    "metadata_sha256": sha256_file(s.root / "metadata.json"),
                    "warnings": list(s.warnings),
                }
                for s in subs.submissions
            ]
            for kind, subs in sets.items()
        },
        "left_out": [
            {"id": lo.id, "path": str(lo.path), "error": lo.error} for subs in sets.values() for lo in subs.left_out
        ],
        "excluded": excluded,
    }


def _check_same_dataset(store: RunStore, dataset: DataSet, out: Path) -> None:
    """A resume must score the images the run started with: its stored pieces name batches of the data set, not
    images, so another data set would be scored half with the old pieces, silently."""
    digest = sha256_file(dataset.root / "dataset.csv")
    recorded = store.meta_json("dataset")
    if recorded is None and (out / "manifest.json").is_file():  # a run folder from before the check: its manifest
        try:
            recorded = json.loads((out / "manifest.json").read_text())["dataset"]
        except (ValueError, KeyError, TypeError, OSError):
            recorded = None
    if not isinstance(recorded, dict) or not recorded.get("csv_sha256"):
        store.set_meta("dataset", json.dumps({"path": str(dataset.root), "csv_sha256": digest}))
        return
    if recorded["csv_sha256"] != digest:
        raise SandboxError(
            out,
            f"this run folder was made with the data set {recorded.get('path')}, and {dataset.root}/dataset.csv is "
            "not the one it had",
            f"resume it with --dataset {recorded.get('path')} (as it was then), or choose a new run folder",
        )


def _open_run(out: Path, options: RunOptions) -> tuple[RunStore, str, str]:
    """Creates the run folder, or reopens it after checking it was made with the same scoring settings."""
    store = RunStore(out)
    existing = store.meta_json("settings")
    if existing is None:
        run_id = f"{datetime.now().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
        store.set_meta("run_id", run_id)
        store.set_meta("secret", secrets.token_hex(16))
        store.set_meta("settings", json.dumps(options.scoring_settings(), sort_keys=True))
        return store, run_id, store.get_meta("secret") or ""
    if existing != options.scoring_settings():
        store.close()
        raise SandboxError(
            out,
            f"this run folder was made with {json.dumps(existing)}",
            "resume it with the same epsilon, batch size, attack piece size, defense batch size and seed, or choose "
            "a new run folder",
        )
    return store, store.get_meta("run_id") or "", store.get_meta("secret") or ""


def resolve_options(options: RunOptions) -> RunOptions:
    """Fills in what depends on the machine (workers, each one's CPU share) and the run folder, once, here: the
    CLI prints these values, the manifest records them, and a library caller gets the same defaults."""
    jobs = options.jobs or default_workers(options.limits.memory)
    return replace(
        options, jobs=jobs, limits=options.limits.for_workers(jobs), out=Path(options.out or default_out_dir())
    )


def run_competition(options: RunOptions | None = None, events: Events | None = None) -> RunResult:
    """Runs every attack on the data set and every defense on every attack's images; writes the outputs."""
    options = resolve_options(options or RunOptions())
    out = Path(options.out or ".")
    try:
        return _run_competition(options, events or Events())
    except (OSError, sqlite3.OperationalError) as exc:
        if not _is_disk_full(exc, out):
            raise
        raise _disk_full(out, options) from None


def _is_disk_full(exc: BaseException, out: Path) -> bool:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError):
        text = str(exc)
        return "full" in text or ("disk I/O" in text and _free_bytes(out) < 1024**2)
    return False


def _free_bytes(folder: Path) -> int:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return 0


def _disk_full(out: Path, options: RunOptions) -> SandboxError:
    """One line: where, how much is free, about how much the run needs, and how to go on."""
    free_mb = _free_bytes(out) // 1024**2
    try:
        dataset = load_dataset(options.dataset or default_dataset_dir())
        sample = [dataset.root / "images" / f"{r.image_id}.png" for r in dataset.records[:50]]
        image_bytes = sum(path.stat().st_size for path in sample) / max(1, len(sample))
        n_attacks = sum(
            len(list(Path(f).iterdir())) for f in (*(options.attacks or ()), *(options.targeted_attacks or ()))
        )
        n_attacks = n_attacks or len(sample_dirs("attack")) + len(sample_dirs("targeted_attack"))
        # Stored images, each piece's input copies and the outputs; rounded up generously.
        need_mb = int(3 * image_bytes * len(dataset.records) * max(1, n_attacks) / 1024**2) + 100
    except (SandboxError, OSError):
        need_mb = 100
    fix = f"free about {need_mb} MB there and resume with --out {out} (finished pieces are kept)"
    return SandboxError(out, f"no space left on device ({free_mb} MB free)", fix)


def _run_competition(options: RunOptions, events: Events) -> RunResult:
    """Admit -> run attack pieces -> run defense pieces -> score and write; any stop keeps what is stored."""
    started = time.monotonic()
    assert options.jobs is not None and options.out is not None, "resolve_options fills these in"
    out = Path(options.out)
    if min(options.jobs, options.batch_size, options.attack_piece_size, options.defense_batch_size) < 1:
        raise SandboxError("options", "jobs, batch size, attack piece size and defense batch size must be at least 1")
    executor = make_executor(options.executor, options.runtime, options.isolation, options.gpus, options.ray_address)
    driver_gpus = options.gpus if executor.pieces_run_here else None  # else the workers' runtimes check GPUs
    runtime = make_runtime(options.runtime, options.isolation, keep_spares=options.jobs, gpus=driver_gpus)
    try:
        executor.start()  # joins a Ray cluster, or starts Ray, before the run folder is made
    except BaseException:
        runtime.close()
        raise
    if options.runtime == "process":
        from sandbox.runtime.process import WARNING

        events.warning(WARNING)
    new_folder = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = _lock_run_folder(out)
    except BaseException:
        _close_both(runtime, executor)
        raise
    try:
        store, run_id, secret = _open_run(out, options)
    except BaseException:
        os.close(lock)
        _close_both(runtime, executor)
        if new_folder:
            shutil.rmtree(out, ignore_errors=True)
        raise
    discard = False
    try:
        starting = new_folder  # until admission is done, a failure leaves no run folder behind
        sets, dataset, manifest = _admit_all(options, out, runtime, store, run_id, events)
        if executor.pieces_run_here:
            runtime.prepare_run(run_id, options.limits)
        wanted = {_wants_gpu(options, s) for subs in sets.values() for s in subs.submissions}
        executor.check([_piece_request(options, gpu) for gpu in sorted(wanted)])  # before any piece runs
        starting = False
        shipped, messages = executor.for_pieces(runtime, events)  # a Ray worker gets what it can hold
        weights = Path(manifest["weights"]["path"]) if manifest["weights"] else None  # checked, resolved
        ctx = RunContext(run_id, out.resolve(), secret, options.limits, dataset, shipped, bool(options.gpus), weights)
        run = _Run(options, sets, ctx, store, store.finished_piece_ids(), events, options.jobs, executor, messages)
        resumed = _run_attacks(run) + _run_defenses(run)
        for leftover in ("work", "clean"):
            shutil.rmtree(out / leftover, ignore_errors=True)
        executor.cleanup_run(run_id)  # what the run left on a cluster's machines (first: workers may still remove)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cleanup") as pool:
            # Containers a host fault left behind, if any, and the spare output folders: Docker's work, done while
            # the scores and the report are written (files only).
            cleanup = pool.submit(runtime.cleanup_run, run_id)
            manifest["run_wall_s"] = round(time.monotonic() - started, 3)
            write_atomically(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
            results = write_outputs(out, store, dataset, manifest)
            cleanup.result()
    except BaseException:
        _stop_containers(executor, run_id, events)
        _close_quietly(runtime, events)  # first: a worker still busy starts nothing new, not even a retry
        _stop_containers(runtime, run_id, events)  # an interrupt, Docker going away: a resume re-runs those pieces
        discard = starting
        raise
    finally:
        try:
            _close_both(runtime, executor)
        finally:
            store.close()
            os.close(lock)
            if discard:
                shutil.rmtree(out, ignore_errors=True)
    left_out = [lo for subs in sets.values() for lo in subs.left_out]
    return RunResult(out, results, left_out, resumed)


def _close_both(runtime: Runtime, executor: Executor) -> None:
    try:
        runtime.close()
    finally:
        executor.close()


def _lock_run_folder(out: Path) -> int:
    """One run at a time in a run folder: a second one would remove the first one's containers and input folders
    as leftovers and write the same store. The lock is the kernel's, so a killed run holds it no longer."""
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if not isinstance(exc, BlockingIOError):
            return fd  # a file system without locks (some NFS set-ups): the run goes on unguarded, as before
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise SandboxError(
            out,
            f"another `sandbox run` (process {holder}) is using this run folder",
            "wait for it to end, or choose another --out",
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _admit_all(
    options: RunOptions, out: Path, runtime: Runtime, store: RunStore, run_id: str, events: Events
) -> tuple[dict[str, SubmissionSet], DataSet, dict]:
    """Admits every submission (and its image), reports what was left out, drops the results of resubmitted
    ones, and writes the manifest."""
    sets, dataset = _load_all(options, out)
    _check_same_dataset(store, dataset, out)
    excluded = exclude(sets, options.exclude)
    _check_sizes(sets, dataset)
    for sub_id in sorted(set(options.exclude) - set(excluded)):
        events.warning(f"excluded id {sub_id}: no submission of this run has that id; nothing was excluded for it")
    _check_images(runtime, sets, options, events)
    added, changed = track_versions(store, sets, datetime.now(timezone.utc).isoformat(timespec="seconds"))
    for sub_id in changed:
        events.message(f"{sub_id} changed since it last ran here: its results are dropped and it runs again")
    for subs in sets.values():
        for lo in subs.left_out:
            events.warning(f"left out {lo.id}: {lo.error}")
        for submission in subs.submissions:
            for warning in submission.warnings:
                events.warning(warning)
    manifest = _manifest(options, run_id, dataset, sets, runtime, added, excluded)
    write_atomically(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    for cache in ("clean", "work"):  # inputs cached by an interrupted run (links to its files): written afresh
        shutil.rmtree(out / cache, ignore_errors=True)
    removed = runtime.cleanup_run(run_id)
    if removed:
        events.message(f"removed {removed} containers/volumes left by an interrupted run")
    return sets, dataset, manifest


def _close_quietly(runtime: Runtime, events: Events) -> None:
    """Best effort while a run stops, like `_stop_containers`."""
    try:
        runtime.close()
    except Exception as exc:  # noqa: BLE001 - reported, and the original error is re-raised by the caller
        events.warning(f"could not close the runtime ({type(exc).__name__}: {exc})")


def _stop_containers(runtime: Runtime | Executor, run_id: str, events: Events) -> None:
    """Best effort while a run stops: a failure here must not hide the error that stopped the run."""
    try:
        runtime.cleanup_run(run_id)
    except Exception as exc:  # noqa: BLE001 - reported, and the original error is re-raised by the caller
        events.warning(
            f"could not remove this run's containers ({type(exc).__name__}: {exc}); `docker ps -a` shows them"
        )


@dataclass
class _Run:
    """What the phases of one run share."""

    options: RunOptions
    sets: dict[str, SubmissionSet]
    ctx: RunContext
    store: RunStore
    finished: set[str]  # piece ids stored by an earlier, interrupted run of this folder
    events: Events
    jobs: int
    executor: Executor
    messages: Messages  # what a piece's host-fault retry reports to: `events`, or a worker's log on a cluster


def _wants_gpu(options: RunOptions, submission: Submission) -> bool:
    return bool(options.gpus and submission.metadata.container_gpu)


def _piece_request(options: RunOptions, gpu: bool) -> PieceRequest:
    """What one piece holds while it runs, from the limits its container gets."""
    return PieceRequest(options.limits.cpu_share(), size_bytes(options.limits.memory), gpu)


def _run_phase(
    run: _Run,
    name: str,
    pieces: Sequence[AttackPiece | DefensePiece],
    task_of: Callable[[Any], Task[Ran[R]]],
    store_result: Callable[[R], PieceRecord],
    subs: dict[str, Submission],
) -> int:
    """Runs the pieces not finished yet, in order, `jobs` at a time (with GPUs: also one GPU piece per GPU, for
    submissions that name a `container_gpu`); each result is stored as soon as it comes. Returns how many pieces
    were finished before (a resume keeps them)."""
    todo = [piece for piece in pieces if piece.piece_id not in run.finished]
    run.events.phase(name, len(pieces), len(pieces) - len(todo))
    out, wait_s = Path(run.options.out or "."), run.options.docker_wait
    tasks = [_retrying_host_faults(task_of(piece), run.ctx.runtime, wait_s, out, run.messages) for piece in todo]
    if not run.executor.pieces_run_here:  # a cluster's worker finishes its own pieces: the driver would be swamped
        tasks = [partial(_finished_on_worker, task) for task in tasks]
    wants_gpu = [_wants_gpu(run.options, subs[piece.submission_id]) for piece in todo]
    request = partial(_piece_request, run.options)
    for ran in run.executor.run_tasks(tasks, run.jobs, run.options.gpus, wants_gpu, request):
        # Here, beside the worker's next container: reading outputs into results needs no worker.
        run.events.piece_done(store_result(ran.finish()))
    return len(pieces) - len(todo)


def _finished_on_worker(task: Task[Ran[R]], gpu: str | None) -> Ran[R]:
    return Ran(partial(_given, task(gpu).finish()))


def _given(value: R) -> R:
    return value


def _run_attacks(run: _Run) -> int:
    options, sets = run.options, run.sets
    subs = {s.id: s for kind in ("attack", "targeted_attack") for s in sets[kind].submissions}
    pieces = plan_attack_pieces(
        [s.id for s in sets["attack"].submissions],
        [s.id for s in sets["targeted_attack"].submissions],
        [r.image_id for r in run.ctx.dataset.records],
        options.batch_size,
        options.epsilon,
        options.seed,
        options.attack_piece_size,
    )

    def store_result(result: AttackPieceResult) -> PieceRecord:
        run.store.save_adversarial_pngs(result.pngs)
        run.store.record_attack_piece(result.record, result.images)
        add_defense_inputs(run.ctx, result.pngs, run.store.adversarial_path)  # the defense phase finds them written
        return result.record

    return _run_phase(
        run,
        "attacks",
        pieces,
        lambda p: partial(run_attack_piece, p, subs[p.submission_id], run.ctx),
        store_result,
        subs,
    )


HOST_FAULT_TRIES = 3
T = TypeVar("T")
R = TypeVar("R")


def _retrying_host_faults(task: Task[T], runtime: Runtime, docker_wait: float, out: Path, events: Messages) -> Task[T]:
    """Runs a piece again when the host failed it: the submission is scored only on what it did itself.

    A daemon that stopped answering is waited for (--docker-wait); any other host fault is retried a few times.
    When neither helps, the run stops with one line; the pieces already stored are kept for a resume. It holds only
    what a Ray worker can be sent (the executor's runtime and messages).
    """

    def call(gpu: str | None) -> T:
        for attempt in range(1, HOST_FAULT_TRIES + 1):
            try:
                return task(gpu)
            except RuntimeUnavailable as exc:
                events.warning(f"{exc}; waiting up to {docker_wait:g} s for it to come back (--docker-wait)")
                if not runtime.wait_until_available(docker_wait):
                    raise RuntimeUnavailable(
                        "",
                        f"Docker did not answer for {docker_wait:g} s",
                        f"start it (`docker info`) and resume with --out {out}",
                    ) from None
                events.message("Docker answers again; re-running the interrupted piece")
            except HostFault as exc:
                if attempt == HOST_FAULT_TRIES:
                    raise HostFault(
                        exc.where,
                        f"{exc.problem}; tried {HOST_FAULT_TRIES} times, stopping",
                        f"fix the host and resume with --out {out}",
                    ) from None
                events.warning(f"{exc}; the host's fault, not the submission's: trying the piece again")
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    return call


def _defense_plan(options, subs, store, distinct_hashes: list[str]) -> list[DefensePiece]:
    """The stored defense pieces of this run folder, plus new ones for images no piece of a defense holds yet.

    Stored pieces never change (a resume with another --jobs, or images added later, re-runs nothing finished).
    """
    stored = [
        DefensePiece(piece_id, defense, hashes, piece_seed(options.seed, piece_id))
        for piece_id, (defense, hashes) in store.defense_plan().items()
        if defense in subs
    ]
    planned: dict[str, set[str]] = {}
    for piece in stored:
        planned.setdefault(piece.submission_id, set()).update(piece.image_hashes)
    new = plan_defense_pieces(
        list(subs), distinct_hashes, options.jobs, options.defense_batch_size, options.seed, planned
    )
    store.save_defense_plan((p.piece_id, p.submission_id, p.image_hashes) for p in new)
    return stored + new


def _run_defenses(run: _Run) -> int:
    subs = {s.id: s for s in run.sets["defense"].submissions}
    # The images of the attacks taking part: an excluded or removed attack's stored images are not classified.
    attack_ids = [s.id for kind in ("attack", "targeted_attack") for s in run.sets[kind].submissions]
    distinct = run.store.distinct_hashes(attack_ids)
    plan = _defense_plan(run.options, subs, run.store, distinct)
    pieces = sorted(plan, key=lambda p: -len(p.image_hashes))  # longest first

    def store_result(result: DefensePieceResult) -> PieceRecord:
        run.store.record_defense_piece(result.record, result.labels)
        return result.record

    adversarial_path = partial(adversarial_image_path, run.store.run_dir)  # a Ray worker can hold it
    add_defense_inputs(run.ctx, distinct, adversarial_path, exactly=True)
    return _run_phase(
        run,
        "defenses",
        pieces,
        lambda p: partial(run_defense_piece, p, subs[p.submission_id], run.ctx, adversarial_path),
        store_result,
        subs,
    )


def incomplete_submissions(store: RunStore, ids: dict[str, list[str]]) -> list[str]:
    """The submissions of the run with a failed piece (time limit, crash, memory): the NIPS 2017 organizers
    ranked the others without them."""
    taking_part = {i for kind_ids in ids.values() for i in kind_ids}
    return sorted({p.submission_id for p in store.pieces() if p.status != "ok" and p.submission_id in taking_part})


def write_outputs(out: Path, store: RunStore, dataset: DataSet, manifest: dict) -> dict:
    """Scores from the store, then every output file; also what `sandbox report` calls."""
    ids = {kind: [s["id"] for s in manifest["submissions"][kind]] for kind in manifest["submissions"]}
    dropped = incomplete_submissions(store, ids) if manifest["settings"].get("drop_incomplete") else []
    ids = {kind: [i for i in kind_ids if i not in dropped] for kind, kind_ids in ids.items()}
    scores = compute_scores(store, dataset, ids["attack"], ids["targeted_attack"], ids["defense"])
    write_nips_files(out, scores)
    results = build_results(scores, store, manifest)
    results["dropped_incomplete"] = dropped
    write_results(out, results)
    write_report_html(out, results, store, dataset)
    return results


def rebuild_report(run_dir: Path) -> dict:
    """Re-scores a finished (or partial) run folder from its store and manifest alone."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SandboxError(manifest_path, "missing", "pass a run folder made by `sandbox run`")
    try:
        manifest = json.loads(manifest_path.read_text())
        dataset_path = Path(manifest["dataset"]["path"])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        problem = f"not a manifest written by `sandbox run` ({type(exc).__name__}: {exc})"
        raise SandboxError(manifest_path, problem, "re-run the run folder with `sandbox run --out`") from None
    if not (run_dir / "store.sqlite").is_file():
        raise SandboxError(run_dir / "store.sqlite", "missing", "pass a run folder made by `sandbox run`")
    dataset = load_dataset(dataset_path)
    recorded = manifest.get("dataset", {}).get("csv_sha256")
    if recorded and sha256_file(dataset.root / "dataset.csv") != recorded:
        raise SandboxError(
            dataset.root / "dataset.csv",
            "changed since the run (its SHA-256 is not the manifest's): the scores would be of other labels",
            "restore the data set the run used, or run the competition again on this one",
        )
    store = RunStore(run_dir)
    try:
        return write_outputs(run_dir, store, dataset, manifest)
    finally:
        store.close()
