"""`run_competition`: plan -> run pieces -> store -> score -> report (SPEC 4).

The run folder holds everything: `manifest.json` (every setting), `store.sqlite` (results as pieces finish),
`adversarial/` (the clipped images) and the outputs. Running again with the same folder resumes it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import platform
import secrets
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

from sandbox import __version__
from sandbox.bundled import default_dataset_dir, sample_dirs
from sandbox.dataset import DataSet, load_dataset
from sandbox.errors import HostFault, RuntimeUnavailable, SandboxError
from sandbox.executor import run_tasks
from sandbox.image_names import is_sandbox_image
from sandbox.pieces import RunContext, run_attack_piece, run_defense_piece
from sandbox.plan import DefensePiece, piece_seed, plan_attack_pieces, plan_defense_pieces
from sandbox.reporting import build_results, write_nips_files, write_report_html, write_results
from sandbox.runtime import Limits, Runtime, make_runtime
from sandbox.runtime.base import default_workers
from sandbox.scoring import compute_scores
from sandbox.store import PieceRecord, RunStore, write_atomically
from sandbox.submission import LeftOut, SubmissionSet, load_submissions


@dataclass(frozen=True)
class RunOptions:
    """Every option of `sandbox run`; None for a submission folder list means the shipped samples."""

    attacks: tuple[Path, ...] | None = None
    targeted_attacks: tuple[Path, ...] | None = None
    defenses: tuple[Path, ...] | None = None
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


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _load_all(options: RunOptions, out: Path) -> tuple[dict[str, SubmissionSet], DataSet]:
    dataset = load_dataset(options.dataset or default_dataset_dir())
    sets = {}
    taken: dict[str, str] = {}
    for kind, given in (
        ("attack", options.attacks),
        ("targeted_attack", options.targeted_attacks),
        ("defense", options.defenses),
    ):
        folders = list(given) if given is not None else sample_dirs(kind)
        sets[kind] = load_submissions(folders, kind, out / "submissions" / kind, taken)
    return sets, dataset


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
    for subs in sets.values():
        keep = []
        for submission in subs.submissions:
            problem = problems.get(submission.image(use_gpu))
            if problem:
                subs.left_out.append(LeftOut(submission.id, submission.root, f"{submission.root}: {problem}"))
            else:
                keep.append(submission)
        subs.submissions = keep


def _manifest(
    options: RunOptions, run_id: str, dataset: DataSet, sets: dict[str, SubmissionSet], runtime: Runtime
) -> dict:
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
        },
        "dataset": {
            "path": str(dataset.root),
            "name": dataset.name,
            "images": len(dataset.records),
            "size": list(dataset.size),
            "mode": dataset.mode,
            "num_classes": dataset.num_classes,
            "csv_sha256": _sha256_file(dataset.root / "dataset.csv"),
        },
        "submissions": {
            kind: [
                {
                    "id": s.id,
                    "name": s.display_name,
                    "path": str(s.root),
                    "container": s.image(bool(options.gpus)),
                    "entry_point": s.metadata.entry_point,
                    "source_model": s.metadata.source_model,
                    "metadata_sha256": _sha256_file(s.root / "metadata.json"),
                    "warnings": list(s.warnings),
                }
                for s in subs.submissions
            ]
            for kind, subs in sets.items()
        },
        "left_out": [
            {"id": lo.id, "path": str(lo.path), "error": lo.error} for subs in sets.values() for lo in subs.left_out
        ],
    }


def _open_run(out: Path, options: RunOptions) -> tuple[RunStore, str, str, bool]:
    """Creates the run folder, or reopens it after checking it was made with the same scoring settings."""
    store = RunStore(out)
    existing = store.meta_json("settings")
    if existing is None:
        run_id = f"{datetime.now().strftime('%Y%m%d%H%M%S')}-{secrets.token_hex(4)}"
        store.set_meta("run_id", run_id)
        store.set_meta("secret", secrets.token_hex(16))
        store.set_meta("settings", json.dumps(options.scoring_settings(), sort_keys=True))
        return store, run_id, store.get_meta("secret") or "", False
    if existing != options.scoring_settings():
        store.close()
        raise SandboxError(
            f"{out}: this run folder was made with {json.dumps(existing)}; resume it with the same "
            f"--epsilon/--batch-size/--attack-piece-size/--defense-batch-size/--seed, or choose a new --out"
        )
    return store, store.get_meta("run_id") or "", store.get_meta("secret") or "", True


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
    out = Path(options.out)
    try:
        return _run_competition(options, events or Events())
    except (OSError, sqlite3.OperationalError) as exc:
        if not _is_disk_full(exc, out):
            raise
        raise SandboxError(_disk_full_message(out, options)) from None


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


def _disk_full_message(out: Path, options: RunOptions) -> str:
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
    return (
        f"{out}: no space left on device ({free_mb} MB free); free about {need_mb} MB there and resume with "
        f"--out {out} (finished pieces are kept)"
    )


def _run_competition(options: RunOptions, events: Events) -> RunResult:
    started = time.monotonic()
    out = Path(options.out)
    if min(options.jobs, options.batch_size, options.attack_piece_size, options.defense_batch_size) < 1:
        raise SandboxError("--jobs, --batch-size, --attack-piece-size and --defense-batch-size must be at least 1")
    runtime = make_runtime(options.runtime, options.isolation, keep_spares=options.jobs)
    if options.runtime == "process":
        from sandbox.runtime.process import WARNING

        events.warning(WARNING)
    out.mkdir(parents=True, exist_ok=True)
    store, run_id, secret, resumed = _open_run(out, options)
    try:
        sets, dataset = _load_all(options, out)
        _check_images(runtime, sets, options, events)
        for subs in sets.values():
            for lo in subs.left_out:
                events.warning(f"left out {lo.id}: {lo.error}")
            for submission in subs.submissions:
                for warning in submission.warnings:
                    events.warning(warning)
        manifest = _manifest(options, run_id, dataset, sets, runtime)
        write_atomically(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        shutil.rmtree(out / "clean", ignore_errors=True)  # inputs cached by an interrupted run: written afresh
        removed = runtime.cleanup_run(run_id)
        if removed:
            events.message(f"removed {removed} containers/volumes left by an interrupted run")
        ctx = RunContext(run_id, out.resolve(), secret, options.limits, use_gpu=bool(options.gpus))
        finished = store.finished_piece_ids()
        resumed_pieces = _run_attacks(options, sets, dataset, ctx, runtime, store, finished, events)
        resumed_pieces += _run_defenses(options, sets, dataset, ctx, runtime, store, finished, events)
        shutil.rmtree(out / "work", ignore_errors=True)
        shutil.rmtree(out / "clean", ignore_errors=True)
        runtime.cleanup_run(run_id)  # containers a host fault left behind, if any
        manifest["run_wall_s"] = round(time.monotonic() - started, 3)
        write_atomically(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
        results = write_outputs(out, store, dataset, manifest)
    except BaseException:
        # Stop what is still running (an interrupt, Docker going away); a resume re-runs those pieces.
        try:
            runtime.cleanup_run(run_id)
        except Exception:
            pass
        raise
    finally:
        try:
            runtime.close()
        finally:
            store.close()
    left_out = [lo for subs in sets.values() for lo in subs.left_out]
    return RunResult(out, results, left_out, resumed_pieces)


def _run_attacks(options, sets, dataset, ctx, runtime, store, finished, events) -> int:
    subs = {s.id: s for kind in ("attack", "targeted_attack") for s in sets[kind].submissions}
    pieces = plan_attack_pieces(
        [s.id for s in sets["attack"].submissions],
        [s.id for s in sets["targeted_attack"].submissions],
        [r.image_id for r in dataset.records],
        options.batch_size,
        options.epsilon,
        options.seed,
        options.attack_piece_size,
    )
    todo = [p for p in pieces if p.piece_id not in finished]
    events.phase("attacks", len(pieces), len(pieces) - len(todo))
    tasks: list[Callable] = [
        _retrying_host_faults(
            partial(_attack_task, piece, subs[piece.submission_id], dataset, ctx, runtime), runtime, options, events
        )
        for piece in todo
    ]
    for result in run_tasks(tasks, options.jobs, options.gpus):
        store.save_adversarial_pngs(result.pngs)
        store.record_attack_piece(result.record, result.images)
        events.piece_done(result.record)
    return len(pieces) - len(todo)


HOST_FAULT_TRIES = 3


def _retrying_host_faults(task: Callable, runtime: Runtime, options: RunOptions, events: Events) -> Callable:
    """Runs a piece again when the host failed it: the submission is scored only on what it did itself.

    A daemon that stopped answering is waited for (--docker-wait); any other host fault is retried a few times.
    When neither helps, the run stops with one line; the pieces already stored are kept for a resume.
    """

    def call(gpu):
        for attempt in range(1, HOST_FAULT_TRIES + 1):
            try:
                return task(gpu)
            except RuntimeUnavailable as exc:
                events.warning(f"{exc}; waiting up to {options.docker_wait:g} s for it to come back (--docker-wait)")
                if not runtime.wait_until_available(options.docker_wait):
                    raise RuntimeUnavailable(
                        f"Docker did not answer for {options.docker_wait:g} s; start it (`docker info`) and resume "
                        f"with --out {options.out}"
                    ) from None
                events.message("Docker answers again; re-running the interrupted piece")
            except HostFault as exc:
                if attempt == HOST_FAULT_TRIES:
                    raise HostFault(
                        f"{exc}; tried {HOST_FAULT_TRIES} times, stopping: fix the host and resume with --out "
                        f"{options.out}"
                    ) from None
                events.warning(f"{exc}; the host's fault, not the submission's: trying the piece again")
                time.sleep(2.0 * attempt)
        raise AssertionError("unreachable")

    return call


def _attack_task(piece, submission, dataset, ctx, runtime, gpu):
    return run_attack_piece(piece, submission, dataset, ctx, runtime, gpu)


def _defense_task(piece, submission, dataset, ctx, runtime, adversarial_path, gpu):
    return run_defense_piece(piece, submission, dataset, ctx, runtime, adversarial_path, gpu)


def _defense_plan(options, subs, store) -> list[DefensePiece]:
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
        list(subs), store.distinct_hashes(), options.jobs, options.defense_batch_size, options.seed, planned
    )
    store.save_defense_plan((p.piece_id, p.submission_id, p.image_hashes) for p in new)
    return stored + new


def _run_defenses(options, sets, dataset, ctx, runtime, store, finished, events) -> int:
    subs = {s.id: s for s in sets["defense"].submissions}
    pieces = _defense_plan(options, subs, store)
    todo = [p for p in pieces if p.piece_id not in finished]
    todo.sort(key=lambda p: -len(p.image_hashes))  # longest first: the last pieces to finish are the short ones
    events.phase("defenses", len(pieces), len(pieces) - len(todo))
    tasks: list[Callable] = [
        _retrying_host_faults(
            partial(_defense_task, piece, subs[piece.submission_id], dataset, ctx, runtime, store.adversarial_path),
            runtime,
            options,
            events,
        )
        for piece in todo
    ]
    for result in run_tasks(tasks, options.jobs, options.gpus):
        store.record_defense_piece(result.record, result.labels)
        events.piece_done(result.record)
    return len(pieces) - len(todo)


def write_outputs(out: Path, store: RunStore, dataset: DataSet, manifest: dict) -> dict:
    """Scores from the store, then every output file; also what `sandbox report` calls."""
    ids = {kind: [s["id"] for s in manifest["submissions"][kind]] for kind in manifest["submissions"]}
    scores = compute_scores(store, dataset, ids["attack"], ids["targeted_attack"], ids["defense"])
    write_nips_files(out, scores)
    results = build_results(scores, store, manifest)
    write_results(out, results)
    write_report_html(out, results, store, dataset)
    return results


def rebuild_report(run_dir: Path) -> dict:
    """Re-scores a finished (or partial) run folder from its store and manifest alone."""
    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.is_file():
        raise SandboxError(f"{manifest_path}: missing; pass a run folder made by `sandbox run`")
    manifest = json.loads(manifest_path.read_text())
    dataset = load_dataset(Path(manifest["dataset"]["path"]))
    store = RunStore(run_dir)
    try:
        return write_outputs(run_dir, store, dataset, manifest)
    finally:
        store.close()
