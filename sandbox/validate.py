"""`sandbox validate`: check a submission exactly as the organizers' run will, trial run included.

Two levels. An **error** is anything that would leave the submission out, fail a piece, or count an image as
failed or wrong in the run. A **warning** is what the run repairs silently (pixels beyond epsilon that clipping
removes, a converted image mode, unknown metadata fields, a non-zero exit with complete outputs).
"""

from __future__ import annotations

import io
import secrets
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sandbox.bundled import default_dataset_dir
from sandbox.dataset import DataSet, load_dataset
from sandbox.image_names import is_sandbox_image
from sandbox.outputs_read import decode_image, encode_png, parse_result_csv
from sandbox.pieces import RunContext, execute_attack, execute_defense
from sandbox.plan import AttackPiece, piece_seed
from sandbox.runtime import Limits, make_runtime
from sandbox.runtime.base import JobOutcome, default_workers
from sandbox.submission import Finding, Findings, Level, Submission, admit, size_problem, submission_id
from sandbox.weights import check_folder

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class ValidationReport(Findings):
    path: str
    id: str
    type: str | None = None
    findings: list[Finding] = field(default_factory=list)
    trial: dict = field(default_factory=dict)

    def add(self, level: Level, where: Path | str, problem: str, fix: str = "") -> None:
        self.findings.append(Finding(level, str(where), problem, fix))

    def passed(self, strict: bool = False) -> bool:
        return not self.errors and not (strict and self.warnings)

    def to_dict(self, strict: bool = False) -> dict:
        return {
            "path": self.path,
            "id": self.id,
            "type": self.type,
            "ok": self.passed(strict),
            "errors": [_finding_dict(f) for f in self.errors],
            "warnings": [_finding_dict(f) for f in self.warnings],
            "trial": self.trial,
        }


def _finding_dict(finding: Finding) -> dict:
    return {**asdict(finding), "message": finding.message}


def _examples(names: list[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _admit(path: Path, report: ValidationReport, unpack_dir: Path) -> Submission | None:
    """Archive safety, metadata, entry point, readability: exactly the checks that admit it to a run."""
    admission = admit(path, unpack_dir)
    report.type = admission.type
    report.findings.extend(admission.findings)
    return admission.submission


def _png_info(data: bytes) -> tuple[tuple[int, int], str] | None:
    """(size, mode) from the PNG header alone: nothing is decoded."""
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
            return image.size, image.mode
    except (OSError, ValueError, SyntaxError):
        return None


def _sample(dataset: DataSet, n: int) -> list[str]:
    """`n` images spread evenly over the data set, the same every time."""
    records = dataset.records
    n = max(1, min(n, len(records)))
    step = len(records) / n
    return [records[int(i * step)].image_id for i in range(n)]


@dataclass
class AttackOutputs:
    """What a trial's attack outputs hold, image by image: the names of those that fail, and what is repaired."""

    missing: list[str] = field(default_factory=list)
    not_png: list[str] = field(default_factory=list)
    wrong_size: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)
    wrong_mode: list[str] = field(default_factory=list)
    over_pixels: int = 0  # pixel values beyond epsilon (clipped by the run)
    worst: int = 0  # the largest excess over epsilon

    @property
    def failed(self) -> int:
        return len(self.missing) + len(self.not_png) + len(self.wrong_size) + len(self.unreadable)


def _read_attack_outputs(
    dataset: DataSet, outcome: JobOutcome, names: dict[str, str], clean: dict[str, np.ndarray], epsilon: int
) -> AttackOutputs:
    """Reads each output the way the run does (decode_image), and keeps why any image would fail."""
    found = AttackOutputs()
    for image_id, name in names.items():
        data = outcome.files.get(name)
        if data is None:
            found.missing.append(name)
            continue
        if not data.startswith(PNG_MAGIC):
            found.not_png.append(name)
            continue
        info = _png_info(data)
        pixels = decode_image(data, dataset.size, dataset.mode)
        if info is None or pixels is None:
            if info is not None and info[0] != dataset.size:
                found.wrong_size.append(f"{name} ({info[0][0]}x{info[0][1]})")
            else:
                found.unreadable.append(name)
            continue
        if info[1] != dataset.mode:
            found.wrong_mode.append(f"{name} ({info[1]})")
        excess = np.abs(pixels.astype(np.int16) - clean[image_id].astype(np.int16)) - epsilon
        found.over_pixels += int(np.count_nonzero(excess > 0))
        found.worst = max(found.worst, int(excess.max()))
    return found


def _report_attack_outputs(
    report: ValidationReport, entry: Path, dataset: DataSet, found: AttackOutputs, n: int, epsilon: int
) -> None:
    """One finding per kind of problem, with examples: errors for images the run counts as failed."""
    size = f"{dataset.size[0]}x{dataset.size[1]}"
    errors = (
        (
            found.missing,
            "output images missing",
            "write one PNG per input image into the output folder, with the input's exact file name",
        ),
        (found.not_png, "outputs are not PNG files", "save with format='PNG' (JPEG loses pixels and is refused)"),
        (found.wrong_size, "images have the wrong size", f"keep the input's size, {size}"),
        (found.unreadable, "images cannot be decoded", ""),
    )
    for names, what, fix in errors:
        if names:
            report.add("error", entry, f"{len(names)} of {n} {what} ({_examples(names)})", fix)
    if found.wrong_mode:
        what = f"{len(found.wrong_mode)} of {n} images are not mode {dataset.mode} ({_examples(found.wrong_mode)})"
        report.add("warning", entry, what, "the run converts them")
    if found.over_pixels:
        what = f"{found.over_pixels} pixel values exceed epsilon {epsilon} by up to {found.worst}"
        report.add("warning", entry, what, "the run clips them to [x - eps, x + eps]")


def _check_attack_outputs(
    report: ValidationReport,
    submission: Submission,
    dataset: DataSet,
    outcome: JobOutcome,
    names: dict[str, str],
    clean: dict[str, np.ndarray],
    epsilon: int,
) -> tuple[bool, int]:
    """Returns (every image usable, number of failed images)."""
    entry = submission.root / submission.metadata.entry_point
    found = _read_attack_outputs(dataset, outcome, names, clean, epsilon)
    _report_attack_outputs(report, entry, dataset, found, len(names), epsilon)
    extra = sorted(set(outcome.files) - set(names.values()))
    if extra or outcome.skipped_files:
        report.add("warning", entry, f"unexpected outputs are ignored: {_examples(extra + outcome.skipped_files)}")
    return found.failed == 0, found.failed


def _check_defense_outputs(
    report: ValidationReport,
    submission: Submission,
    dataset: DataSet,
    outcome: JobOutcome,
    by_name: dict[str, str],
) -> tuple[bool, float | None]:
    entry = submission.root / submission.metadata.entry_point
    data = outcome.files.get("result.csv")
    if data is None:
        report.add(
            "error",
            entry,
            "wrote no result.csv; write one `FILENAME,LABEL` line per image to the path given as the second argument",
        )
        return False, None
    labels, bad = parse_result_csv(data, set(by_name))
    n = len(by_name)
    if bad:
        lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
        bad_examples = [line for line in lines if line.split(",")[0].strip() not in labels][:2]
        report.add(
            "error",
            entry,
            f"{bad} result.csv lines cannot be parsed (e.g. {bad_examples!r}); write "
            "`FILENAME,LABEL` with the input's exact file name and an integer label",
        )
    missing = [name for name in by_name if name not in labels]
    if missing:
        report.add(
            "error",
            entry,
            f"{len(missing)} of {n} images have no label ({_examples(missing)}); they count "
            "as wrong: label every input image",
        )
    out_of_range = sorted({label for label in labels.values() if not 0 <= label < dataset.num_classes})
    if out_of_range:
        report.add(
            "error", entry, f"labels {out_of_range[:5]} are outside 0..{dataset.num_classes - 1}; they count as wrong"
        )
    records = dataset.by_id()
    correct = sum(1 for name, image_id in by_name.items() if labels.get(name) == records[image_id].true_label)
    return not (bad or missing or out_of_range), round(correct / n, 4) if n else None


FORECAST_MIN_IMAGES = 20  # the default trial: fewer images make the forecast's upper bound too loose to fail on


def _check_run(
    report: ValidationReport,
    submission: Submission,
    outcome: JobOutcome,
    outputs_ok: bool,
    limits: Limits,
    n_images: int,
) -> None:
    entry = submission.root / submission.metadata.entry_point
    if outcome.error:
        report.add("error", entry, outcome.error)
    elif outcome.timed_out:
        report.add(
            "error",
            entry,
            f"timed out after {outcome.wall_s:.0f} s on {n_images} images (limit {limits.time_limit(n_images):g} s: "
            f"{limits.time_per_100_images:g} s per 100 images, at least {limits.min_time:g} s); make it faster",
        )
    elif outcome.oom_killed:
        report.add(
            "error",
            entry,
            f"killed for using more than {limits.memory} of memory; use less (or ask the organizers for the limit)",
        )
    elif outcome.exit_code != 0:
        level: Level = "warning" if outputs_ok else "error"
        what = "although its outputs are complete" if outputs_ok else "and its outputs are incomplete"
        report.add(level, entry, f"exited with code {outcome.exit_code} {what}; exit 0 when done")
    forecast = outcome.wall_s / max(n_images, 1) * 100
    if not outcome.timed_out and forecast > limits.time_per_100_images:
        # Start-up counts as per-image time here: on a trial of a few images that says little about a run's piece.
        few = n_images < FORECAST_MIN_IMAGES
        report.add(
            "warning" if few else "error",
            entry,
            f"forecast {forecast:.0f} s per 100 images is over the limit of "
            f"{limits.time_per_100_images:g} s; make it faster"
            + (
                f" (or try {FORECAST_MIN_IMAGES} images or more: on {n_images}, start-up weighs too much)"
                if few
                else ""
            ),
        )


def validate_submission(
    path: Path,
    dataset_dir: Path | None = None,
    limits: Limits | None = None,
    epsilon: int = 16,
    images: int = 20,
    runtime_name: str = "docker",
    build_images: bool = True,
    seed: int = 0,
    isolation: str = "runc",
    weights: Path | None = None,
) -> ValidationReport:
    """Checks a submission folder or archive; never raises for a problem of the submission itself.

    `weights`: a folder of model weights mounted read-only into the trial, as `sandbox run --weights` does."""
    path = Path(path)
    limits = (limits or Limits()).for_workers(default_workers((limits or Limits()).memory))  # a run's CPU share
    report = ValidationReport(path=str(path), id=submission_id(path))
    work = Path(tempfile.mkdtemp(prefix="sbx-validate-"))
    try:
        submission = _admit(path, report, work / "unpacked")
        if submission is None:
            return report
        dataset = load_dataset(dataset_dir or default_dataset_dir())
        wrong_size = size_problem(submission, dataset.size)
        if wrong_size is not None:
            report.findings.append(Finding.of(wrong_size))
            return report
        runtime = make_runtime(runtime_name, isolation, measure_memory=True)
        image = submission.image(False)
        problems = runtime.check([image])
        if image in problems and is_sandbox_image(image) and build_images:
            from sandbox.images import TARGETS, image_tag
            from sandbox.images import build_images as build

            build(tuple(t for t in TARGETS if image_tag(t) in problems), log=lambda _: None)
            problems = runtime.check([image])
        if image in problems:
            report.add("error", submission.root / "metadata.json", f"container: {problems[image]}")
            return report
        weights_dir = check_folder(weights) if weights is not None else None
        _trial(report, submission, dataset, limits, epsilon, images, runtime, work, seed, weights_dir)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def _trial(report, submission, dataset, limits, epsilon, images, runtime, work, seed, weights=None) -> None:
    sample = _sample(dataset, images)
    ctx = RunContext(
        f"validate-{secrets.token_hex(4)}", work, secrets.token_hex(16), limits, dataset, runtime, weights=weights
    )
    piece_id = f"validate/{submission.id}"
    if submission.type == "defense":
        inputs = {image_id: encode_png(dataset.load_pixels(image_id)) for image_id in sample}
        outcome, by_name, time_limit = execute_defense(piece_id, piece_seed(seed, piece_id), submission, ctx, inputs)
        outputs_ok, accuracy = _check_defense_outputs(report, submission, dataset, outcome, by_name)
        report.trial["accuracy_on_sample"] = accuracy
    else:
        piece = AttackPiece(
            piece_id,
            submission.id,
            submission.type == "targeted_attack",
            (0,),
            tuple(sample),
            epsilon,
            piece_seed(seed, piece_id),
        )
        execution = execute_attack(piece, submission, ctx)
        outcome, time_limit = execution.outcome, execution.time_limit
        outputs_ok, failed = _check_attack_outputs(
            report, submission, dataset, outcome, execution.names, execution.clean, epsilon
        )
        report.trial["failed_images"] = failed
        report.trial["epsilon"] = epsilon
    _check_run(report, submission, outcome, outputs_ok, limits, len(sample))
    report.trial.update(
        {
            "images": len(sample),
            "dataset": str(dataset.root),
            "wall_s": round(outcome.wall_s, 3),
            "time_limit_s": time_limit,
            "forecast_s_per_100_images": round(outcome.wall_s / len(sample) * 100, 1),
            "limit_s_per_100_images": limits.time_per_100_images,
            "forecast_full_dataset_s": round(outcome.wall_s / len(sample) * len(dataset.records), 1),
            "memory_peak_bytes": outcome.memory_peak_bytes,
            "memory_limit": limits.memory,
            "cpus": limits.cpu_share(),
            "exit_code": outcome.exit_code,
            "isolation": outcome.isolation,
        }
    )
    if report.findings:
        report.trial["stderr_tail"] = outcome.stderr_tail[-3000:] or outcome.stdout_tail[-3000:]
