"""The `sandbox` command: parses options, calls the library, prints. No logic lives only here."""

from __future__ import annotations

import functools
import inspect
import re
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from sandbox.competition import Events, RunOptions, RunResult, rebuild_report, resolve_options, run_competition
from sandbox.errors import ImageBuildError, RuntimeUnavailable, SandboxError
from sandbox.executor.select import EXECUTORS
from sandbox.plan import parse_epsilons
from sandbox.runtime.base import Limits
from sandbox.scoring import places
from sandbox.store import PieceRecord

# soft_wrap: a path or id is never folded onto two lines, whatever the terminal's (or a pipe's) width.
console = Console(stderr=True, soft_wrap=True)
out_console = Console(soft_wrap=True)
_SIZE = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text: object) -> str:
    """Untrusted text (ids, paths, a submission's stderr) for the terminal: no escape sequences, no Rich markup."""
    return escape(_CONTROL.sub("?", str(text)))


def _size(ctx, param, value: str | None) -> str | None:
    if value is not None and not _SIZE.match(value):
        raise click.BadParameter(f"'{value}': use a size like 512m or 4g")
    return value


def _limits(time_limit: float, min_time_limit: float, memory: str, cpus: float, pids: int, output_size: str) -> Limits:
    """The per-piece limits from the flags that `run` and `validate` share, so both apply the same ones."""
    return Limits(time_limit, min_time_limit, memory, cpus, pids, output_size)


def _epsilons(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return parse_epsilons(value)
    except SandboxError as exc:
        raise click.BadParameter(exc.message) from None


WEIGHTS_HELP = "Folder of model weights, mounted read-only at /weights into every piece (`sandbox weights fetch`)."


def progress_bar() -> Progress:
    """One look for every progress bar: name, bar, done/total, elapsed and the estimate of what remains."""
    columns = (BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())
    return Progress(TextColumn("[bold]{task.description}"), *columns, console=console)


class RichEvents(Events):
    """Live progress with ETA, one line per failed piece with the tail of its stderr."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = TaskID(0)

    def message(self, text: str) -> None:
        console.print(f"[dim]{_safe(text)}[/dim]", highlight=False)

    def warning(self, text: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {_safe(text)}", highlight=False)

    def phase(self, name: str, total: int, already_done: int) -> None:
        self.close()
        if already_done:
            self.message(f"{name}: {already_done} of {total} pieces already done in this run folder")
        self.progress = progress_bar()
        self.progress.start()
        self.task = self.progress.add_task(name, total=total, completed=already_done)

    def piece_done(self, record: PieceRecord) -> None:
        if self.progress is not None:
            self.progress.advance(self.task)
        if record.status != "ok":
            reason = record.error or (
                f"timed out after {record.time_limit_s:g} s" if record.timed_out else f"exit code {record.exit_code}"
            )
            if record.oom_killed:
                reason += " (out of memory)"
            tail = (record.stderr_tail or record.stdout_tail).strip().splitlines()
            last = f": {tail[-1][:200]}" if tail else ""
            console.print(
                f"[red]failed[/red] {_safe(record.piece_id)}: {_safe(reason)}{_safe(last)}",
                highlight=False,
            )
        elif record.failed_images:
            console.print(
                f"[yellow]{_safe(record.piece_id)}[/yellow]: {record.failed_images} of {record.n_images} images "
                "missing or unreadable",
                highlight=False,
            )

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None


def _leaderboard(title: str, header: str, rows: list, normalised: dict[str, float], names: dict[str, str]) -> Table:
    """A ranking as a table; a Name column (display name and team) appears when the organizers named anyone."""
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column(header)
    if names:
        table.add_column("Name")
    table.add_column("Score", justify="right")
    table.add_column("Normalised", justify="right")
    for place, (sub_id, score) in zip(places(rows), rows, strict=True):
        named = [_safe(names.get(sub_id, ""))] if names else []
        table.add_row(str(place), _safe(sub_id), *named, str(score), f"{normalised.get(sub_id, 0.0):.3f}")
    return table


def _names(results: dict) -> dict[str, str]:
    """{id: 'name (team)'} for the submissions whose display name or team says more than the id."""
    names = {}
    for entries in (results.get("submissions") or {}).values():
        for entry in entries:
            label = entry.get("name") if entry.get("name") != entry["id"] else ""
            label = f"{label} ({entry['team']})" if entry.get("team") else label
            if label:
                names[entry["id"]] = label.strip()
    return names


def print_leaderboards(results: dict) -> None:
    rankings, normalised, names = results["rankings"], results["normalised_scores"], _names(results)
    for title, header, kind in (
        ("Defenses", "DefenseName", "defense"),
        ("Attacks", "AttackName", "attack"),
        ("Targeted attacks", "AttackName", "targeted_attack"),
    ):
        out_console.print(_leaderboard(title, header, rankings[kind], normalised[kind], names))
    if results.get("dropped_incomplete"):
        dropped = ", ".join(_safe(i) for i in results["dropped_incomplete"])
        out_console.print(f"not ranked (failed pieces, --drop-incomplete): {dropped}", highlight=False)
    if results.get("excluded"):
        out_console.print(f"excluded: {', '.join(_safe(i) for i in results['excluded'])}", highlight=False)


class SandboxCommands(click.Group):
    """Every command's user-facing error (SandboxError) becomes one line on stderr and exit 1, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            console.print(f"[red]error:[/red] {_safe(exc)}", highlight=False)
            sys.exit(1)


def limit_options(command):
    """The per-piece limits and the runtime, declared once: `validate` checks exactly as `run` runs. The command
    gets the limit flags as one `limits` argument (a Limits)."""
    options = [
        _seconds(
            "--time-limit",
            Limits.time_per_100_images,
            "Seconds per 100 images of a piece; the container is killed at the limit.",
            minimum=0.1,
        ),
        _seconds(
            "--min-time-limit",
            Limits.min_time,
            "Seconds every piece gets at least, however few its images (start-up time does not scale).",
        ),
        click.option(
            "--memory", default=Limits.memory, show_default=True, callback=_size, help="Memory per container."
        ),
        click.option(
            "--cpus",
            default=None,
            type=click.FloatRange(min=0.01),
            help="CPUs per container. Default: the machine's cores divided by the pieces run at once.",
        ),
        click.option(
            "--pids", default=Limits.pids, show_default=True, type=click.IntRange(8), help="Processes per container."
        ),
        click.option(
            "--output-size",
            default=Limits.output_size,
            show_default=True,
            callback=_size,
            help="Size cap of a piece's output folder.",
        ),
        click.option(
            "--runtime",
            "runtime_name",
            type=click.Choice(["docker", "process"]),
            default="docker",
            show_default=True,
            help="process runs submissions as local processes: no isolation.",
        ),
        click.option(
            "--isolation",
            type=click.Choice(["runc", "gvisor"]),
            default="runc",
            show_default=True,
            help="gvisor runs containers under runsc (scripts/install-docker.sh --gvisor).",
        ),
    ]

    @functools.wraps(command)
    def with_limits(**flags):
        limit_flags = {name: flags.pop(name) for name in inspect.signature(_limits).parameters}
        return command(limits=_limits(**limit_flags), **flags)

    for option in reversed(options):
        with_limits = option(with_limits)
    return with_limits


def _seconds(flag: str, default: float, help: str, minimum: float = 0.0):
    """A duration option whose default is the library's."""
    return click.option(flag, default=default, show_default=True, type=click.FloatRange(min=minimum), help=help)


def _count(flag: str, default: int, help: str):
    """A count option (at least 1) whose default is the library's."""
    return click.option(flag, default=default, show_default=True, type=click.IntRange(1), help=help)


_FOLDERS: dict = {"multiple": True, "type": click.Path(path_type=Path)}  # a repeatable folder option


@click.group(cls=SandboxCommands)
@click.version_option(package_name="adversarial-sandbox")
def main() -> None:
    """Score adversarial attacks against defenses, each submission in its own locked-down container."""


@main.command()
@click.option("--attacks", **_FOLDERS, help="Folder of attack submissions (repeatable). Default: the shipped samples.")
@click.option("--targeted-attacks", **_FOLDERS, help="Folder of targeted attack submissions (repeatable).")
@click.option("--defenses", **_FOLDERS, help="Folder of defense submissions (repeatable).")
@click.option(
    "--submissions",
    **_FOLDERS,
    help="Folder of received submissions of any type, as organizers get them (repeatable); an optional "
    "submissions.csv (id,name,team) in it names them. Replaces the samples.",
)
@click.option(
    "--exclude", multiple=True, help="Id of a submission to leave out of this run and its scores (repeatable)."
)
@click.option("--drop-incomplete", is_flag=True, help="Rank without submissions that failed a piece (as NIPS 2017).")
@click.option("--dataset", type=click.Path(path_type=Path), help="Data set folder. Default: shipped Fashion-MNIST 1k.")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder; an existing one is resumed.")
@click.option(
    "--epsilon",
    default="16",
    show_default=True,
    callback=_epsilons,
    help="L-inf budget in pixel units, or a list used in turn per batch (4,8,12,16).",
)
@_count("--batch-size", RunOptions.batch_size, "Images per batch; each batch gets one epsilon.")
@_count(
    "--attack-piece-size",
    RunOptions.attack_piece_size,
    "Images per attack container: batches with the same epsilon run together up to this many.",
)
@_count(
    "--defense-batch-size",
    RunOptions.defense_batch_size,
    "At most this many distinct images per defense piece; below it, as few pieces as keep --jobs busy.",
)
@click.option(
    "--seed",
    default=RunOptions.seed,
    show_default=True,
    type=int,
    help="Run seed; each piece gets SANDBOX_SEED from it.",
)
@click.option(
    "--jobs",
    default=None,
    type=click.IntRange(1),
    help="Pieces run at once. Default: one per core, as many as memory holds at --memory each.",
)
@click.option(
    "--gpus",
    default=None,
    help="GPUs: 'all' or ids like 0,1. Submissions with a container_gpu run one piece per GPU, beside "
    "--jobs CPU pieces.",
)
@click.option(
    "--executor",
    type=click.Choice(EXECUTORS),
    default="local",
    show_default=True,
    help="Where pieces run: threads on this machine, or Ray tasks (a local Ray instance, or --ray-address).",
)
@click.option(
    "--ray-address",
    default=None,
    help="With --executor ray: the Ray cluster to join (head IP:port, as `ray start --head` prints it).",
)
@limit_options
@_seconds(
    "--docker-wait",
    RunOptions.docker_wait,
    "Seconds to wait for a Docker daemon that stopped answering (a restart) before stopping the run.",
)
@click.option("--strict", is_flag=True, help="Exit 1 when a submission was left out or a piece failed.")
@click.option("--no-build", is_flag=True, help="Do not build missing sandbox images; leave their submissions out.")
@click.option("--weights", type=click.Path(path_type=Path), help=WEIGHTS_HELP)
def run(**flags) -> None:
    """Run every attack on the data set and every defense on their images; write scores."""
    options = resolve_options(_run_options(**flags))
    _print_settings(options)
    result = _run_with_progress(options)
    print_leaderboards(result.results)
    problems = _print_summary(result)
    sys.exit(1 if flags["strict"] and problems else 0)


def _run_options(
    *,
    attacks,
    targeted_attacks,
    defenses,
    submissions,
    exclude,
    runtime_name,
    no_build,
    strict,
    **settings,
) -> RunOptions:
    """The flags as the library's RunOptions: empty folder lists mean the shipped samples."""
    return RunOptions(
        attacks=tuple(attacks) or None,
        targeted_attacks=tuple(targeted_attacks) or None,
        defenses=tuple(defenses) or None,
        submissions=tuple(submissions),
        exclude=tuple(exclude),
        runtime=runtime_name,
        build_images=not no_build,
        **settings,
    )


def _print_settings(options: RunOptions) -> None:
    """Every limit up front, before anything runs: users learn a limit before it bites."""
    limits = options.limits
    runtime = options.runtime + (f"/{options.isolation}" if options.runtime == "docker" else "")
    console.print(
        f"run folder: [bold]{options.out}[/bold]  (resume an interrupted run with --out {options.out})", highlight=False
    )
    console.print(
        f"limits per piece: {limits.time_per_100_images:g} s per 100 images (at least {limits.min_time:g} s), "
        f"memory {limits.memory}, {limits.cpu_share():g} CPUs, {limits.pids} processes, output {limits.output_size}, "
        f"network none; epsilon {','.join(map(str, options.epsilon))}; jobs {options.jobs}; runtime {runtime}"
        + (f"; executor ray ({options.ray_address or 'local instance'})" if options.executor == "ray" else ""),
        highlight=False,
    )
    if options.weights:
        console.print(_safe(f"weights: {options.weights}, read-only at /weights in every piece"), highlight=False)


def _run_with_progress(options: RunOptions) -> RunResult:
    """Runs with live progress bars (closed before any error line); a Docker or image problem suggests `sandbox
    doctor`, an interrupt says how to resume."""
    events = RichEvents()
    try:
        return run_competition(options, events)
    except (RuntimeUnavailable, ImageBuildError):
        events.close()  # the progress display ends before the hint and the error line
        console.print("[yellow]hint:[/yellow] `sandbox doctor` checks what a run needs", highlight=False)
        raise
    except KeyboardInterrupt:
        events.close()
        console.print(f"[red]interrupted[/red]: resume with --out {options.out}", highlight=False)
        sys.exit(130)
    finally:
        events.close()


def _print_summary(result: RunResult) -> int:
    """Where the outputs are, what a resume kept, and how many submissions were left out or pieces failed (that
    count is returned)."""
    failed = sum(f["pieces_failed"] for f in result.results["failures"].values())
    if result.resumed_pieces:
        console.print(f"{result.resumed_pieces} pieces were already done in this run folder and were kept")
    console.print(f"outputs: [bold]{result.out}[/bold] (results.json, NIPS 2017 score files)", highlight=False)
    if result.left_out or failed:
        console.print(
            f"{len(result.left_out)} submissions left out, {failed} pieces failed: see results.json", highlight=False
        )
    return len(result.left_out) + failed


@main.command()
@click.argument("submission", type=click.Path(path_type=Path))
@click.option(
    "--dataset", type=click.Path(path_type=Path), help="Data set for the trial run. Default: the shipped one."
)
@click.option("--images", default=20, show_default=True, type=click.IntRange(1), help="Images in the trial run.")
@click.option("--epsilon", default=16, show_default=True, type=click.IntRange(0, 255), help="Epsilon of the trial.")
@limit_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--strict", is_flag=True, help="Warnings count as errors.")
@click.option("--weights", type=click.Path(path_type=Path), help=WEIGHTS_HELP)
def validate(
    submission,
    dataset,
    images,
    epsilon,
    limits,
    runtime_name,
    isolation,
    as_json,
    strict,
    weights,
) -> None:
    """Check a submission exactly as the organizers' run will, trial run included."""
    import json

    from sandbox.validate import validate_submission

    report = validate_submission(
        submission, dataset, limits, epsilon, images, runtime_name, isolation=isolation, weights=weights
    )
    if as_json:
        out_console.print_json(json.dumps(report.to_dict(strict)))
    else:
        for finding in report.findings:
            color = "red" if finding.level == "error" else "yellow"
            out_console.print(
                f"[{color}]{finding.level}:[/{color}] {_safe(finding.where)}: {_safe(finding.message)}",
                highlight=False,
            )
        trial = report.trial
        if trial:
            peak = trial.get("memory_peak_bytes")
            memory_text = f"{peak / 1024**2:.0f} MiB of {trial['memory_limit']}" if peak else "not measured"
            out_console.print(
                f"trial: {trial['images']} images in {trial['wall_s']:.1f} s; forecast at most "
                f"{trial['forecast_s_per_100_images']:g} s per 100 images (limit {trial['limit_s_per_100_images']:g}), "
                f"{trial['forecast_full_dataset_s']:g} s for the whole data set; memory peak {memory_text}; "
                f"{trial['cpus']:g} CPUs, a run's share per piece on this machine",
                highlight=False,
            )
            if trial.get("accuracy_on_sample") is not None:
                out_console.print(f"accuracy on the trial images: {trial['accuracy_on_sample']:.1%}", highlight=False)
            if trial.get("stderr_tail"):
                out_console.print("last lines of its output:", highlight=False)
                for line in trial["stderr_tail"].strip().splitlines()[-10:]:
                    out_console.print(f"  {_safe(line)}", highlight=False)
        verdict = "[green]ok[/green]" if report.passed(strict) else "[red]not ok[/red]"
        out_console.print(
            f"{_safe(report.id)}: {verdict} ({len(report.errors)} errors, {len(report.warnings)} warnings)"
        )
    sys.exit(0 if report.passed(strict) else 1)


@main.command()
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), help="Archive to write. Default: FOLDER.zip beside it.")
@click.option("--allow-large", is_flag=True, help="Keep files over 100 MiB.")
@click.option("--image", "build_image", is_flag=True, help="Also build a self-contained image with the code in it.")
@click.option(
    "--save", type=click.Path(path_type=Path), help="Write the image as a `docker save` tar (implies --image)."
)
def package(folder, out, allow_large, build_image, save) -> None:
    """Write a deterministic submission archive (and optionally an image)."""
    from sandbox.package import package_submission

    result = package_submission(folder, out, allow_large, build_image, save)
    for relative, why in result.left_out:
        console.print(f"left out {_safe(relative)}: {_safe(why)}", highlight=False)
    out_console.print(f"wrote {result.archive} ({len(result.files)} files)", highlight=False)
    if result.image:
        out_console.print(f"built image {result.image}", highlight=False)
    if result.saved_image:
        out_console.print(f"saved it to {result.saved_image}; `sandbox run` and `validate` accept it", highlight=False)


@main.command("new")
@click.argument("kind", type=click.Choice(["attack", "targeted_attack", "defense"]))
@click.argument("name")
@click.option("--framework", type=click.Choice(["torch", "tensorflow"]), default="torch", show_default=True)
@click.option("--dir", "parent", type=click.Path(path_type=Path), default=Path("."), help="Where to create it.")
def new(kind, name, framework, parent) -> None:
    """Write a ready submission folder that passes `sandbox validate` as it is."""
    from sandbox.scaffold import new_submission

    folder = new_submission(kind, name, parent, framework)
    out_console.print(f"wrote {folder}; next: sandbox validate {folder}", highlight=False)


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
def report(run_dir: Path) -> None:
    """Re-score a run folder from its stored results and rewrite its outputs."""
    results = rebuild_report(run_dir)
    print_leaderboards(results)
    if not results["complete"]:
        console.print(
            f"[yellow]partial run[/yellow]: these scores are not final; finish it with `sandbox run --out {run_dir}`",
            highlight=False,
        )


@main.group()
def dataset() -> None:
    """Build and check data sets."""


@dataset.command("fashion-mnist")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--per-class", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--seed", default=2017, show_default=True, type=int)
def dataset_fashion_mnist(out: Path, per_class: int, seed: int) -> None:
    """Build the shipped Fashion-MNIST test data set from Debian's dataset-fashion-mnist."""
    from sandbox.dataset import build_fashion_mnist

    path = build_fashion_mnist(out, per_class=per_class, seed=seed)
    out_console.print(f"wrote {path}")


@dataset.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
def dataset_check(folder: Path) -> None:
    """Check a data set folder (docs/contract.md)."""
    from sandbox.dataset import load_dataset

    ds = load_dataset(folder)
    out_console.print(
        f"{ds.root}: {len(ds.records)} images, {ds.size[0]}x{ds.size[1]} {ds.mode}, "
        f"{ds.num_classes} classes ({ds.name})"
    )


@dataset.command("fetch")
@click.argument("source", metavar="CSV", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--workers", default=8, show_default=True, type=click.IntRange(1, 64), help="Parallel downloads.")
@click.option("--retries", default=2, show_default=True, type=click.IntRange(0, 10), help="Extra tries per image.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1), help="Connect/read timeout, s.")
@click.option("--deadline", default=120.0, show_default=True, type=click.FloatRange(0.1), help="Most seconds per try.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N rows (to try it out).")
def dataset_fetch(source: Path, out: Path, workers: int, retries: int, timeout: float, deadline: float, limit) -> None:
    """Download a NIPS 2017 data set (dataset/nips17/*.csv) into OUT: crop, 299x299 RGB PNG; a rerun resumes."""
    from sandbox.fetch import FetchOptions, FetchProgress, fetch_dataset

    bar = progress_bar()
    task = bar.add_task("fetch", total=None)

    def on_progress(event: FetchProgress) -> None:
        bar.update(task, total=event.total, completed=event.done)

    options = FetchOptions(
        workers=workers,
        retries=retries,
        connect_timeout_s=timeout,
        read_timeout_s=timeout,
        deadline_s=deadline,
        limit=limit,
    )
    with bar:
        result = fetch_dataset(source, out, options, progress=on_progress)
    images = len(result.dataset.records) if result.dataset else 0
    summary = f"{result.out}: {result.fetched} fetched, {result.already_there} already there, "
    summary += f"{len(result.failures)} failed; {images} images in the data set"
    if result.failures:
        summary += f" (each with its reason in {result.failures_csv})"
    out_console.print(_safe(summary), highlight=False)


@dataset.command("from-folder")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@click.option(
    "--labels",
    required=True,
    type=click.Path(path_type=Path),
    help="CSV with the header file,TrueLabel[,TargetClass]; file is relative to DIR.",
)
@click.option("--size", default="299", show_default=True, help="Output size: N (square) or WxH.")
@click.option("--crop", default="center", show_default=True, type=click.Choice(["center", "none"]))
@click.option("--mode", default="RGB", show_default=True, type=click.Choice(["RGB", "L"]))
@click.option("--num-classes", default=None, type=click.IntRange(1), help="Default: the largest label plus one.")
@click.option("--seed", default=2017, show_default=True, type=int, help="Draws TargetClass when the CSV has none.")
@click.option("--name", default=None, help="The data set's name in reports. Default: DIR's name and image count.")
@click.option(
    "--label-convention",
    type=click.Choice(["tf-slim-1001", "0-999"]),
    default=None,
    help="ImageNet labels: 1..1000 with 0 = background (NIPS 2017), or 0..999; samples convert (docs/imagenet.md).",
)
def dataset_from_folder(
    folder: Path,
    out: Path,
    labels: Path,
    size: str,
    crop: str,
    mode: str,
    num_classes,
    seed: int,
    name,
    label_convention: str | None,
) -> None:
    """Build a data set in OUT from your own images in DIR and a labels CSV: crop, resize, PNG (docs/datasets.md)."""
    from sandbox.from_folder import FolderOptions, build_from_folder, parse_size

    options = FolderOptions(parse_size(size), crop, mode, num_classes, seed, name, label_convention)
    bar = progress_bar()
    tasks: list[TaskID] = []

    def on_progress(done: int, total: int) -> None:  # the bar appears once the checks passed: no empty bar on errors
        if not tasks:
            tasks.append(bar.add_task("convert", total=total))
        bar.update(tasks[0], completed=done)

    with bar:
        result = build_from_folder(folder, labels, out, options, progress=on_progress)
    ds = result.dataset
    summary = f"{ds.root}: {len(ds.records)} images, {ds.size[0]}x{ds.size[1]} {ds.mode}, {ds.num_classes} classes"
    summary += f", TargetClass drawn with seed {seed}" if result.targets_drawn else ", TargetClass from the CSV"
    if result.unlisted:
        summary += f"; {len(result.unlisted)} files in DIR not in the CSV, left out (first: {result.unlisted[0]})"
    out_console.print(_safe(summary), highlight=False)


@main.group()
def weights() -> None:
    """Model weights for the ImageNet samples: fetch them, check a folder (docs/imagenet.md)."""


@weights.command("fetch")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--model", "models", multiple=True, help="A timm model id (repeatable). Default: the samples' three.")
@click.option("--hub-url", default=None, help="The hub or a mirror. Default: $SANDBOX_WEIGHTS_HUB or Hugging Face.")
@click.option("--timeout", default=60.0, show_default=True, type=click.FloatRange(1), help="Seconds without data.")
def weights_fetch(folder: Path, models: tuple[str, ...], hub_url: str | None, timeout: float) -> None:
    """Download the models' weights into DIR; a rerun downloads only what is missing. Exit 1 on any failure."""
    from sandbox.weights import MODELS, fetch_weights

    result = fetch_weights(folder, models or MODELS, hub_url, timeout, log=lambda line: out_console.print(_safe(line)))
    out_console.print(
        _safe(
            f"{result.folder}: {len(result.fetched)} fetched, {len(result.present)} already there, "
            f"{len(result.failures)} failed"
        ),
        highlight=False,
    )
    sys.exit(1 if result.failures else 0)


@weights.command("check")
@click.argument("folder", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--model", "models", multiple=True, help="A timm model id (repeatable). Default: the samples' three.")
def weights_check(folder: Path, models: tuple[str, ...]) -> None:
    """Check that DIR holds each model's whole weights file, as fetched. Exit 1 naming each one that is not."""
    from sandbox.weights import MODELS, verify_folder

    problems = verify_folder(folder, models or MODELS)
    for model in models or MODELS:
        line = f"[red]{_safe(model)}: {_safe(problems[model])}[/red]" if model in problems else f"{_safe(model)}: ok"
        out_console.print(line, highlight=False)
    sys.exit(1 if problems else 0)


@main.group()
def images() -> None:
    """Build the runtime images the samples use."""


@images.command("build")
@click.option(
    "--target",
    "targets",
    multiple=True,
    type=click.Choice(["base", "torch-cpu", "tensorflow-cpu", "torch-gpu", "tensorflow-gpu"]),
    help="Image to build (repeatable). Default: the CPU images (base, torch-cpu, tensorflow-cpu).",
)
@click.option(
    "--gpu",
    is_flag=True,
    help="Also build the GPU images torch-gpu and tensorflow-gpu (about 3 GB of CUDA wheels each; docs/gpu.md).",
)
@click.option(
    "--base-image",
    default="python:3.11-slim",
    show_default=True,
    help="Base image; when it cannot be pulled the default falls back to a debootstrapped bookworm.",
)
@click.option("--index-url", default=None, help="pip index for the wheel download.")
@click.option("--extra-index-url", "extra_index_urls", multiple=True, help="Extra pip index (repeatable).")
@click.option("--find-links", "find_links", multiple=True, help="pip find-links folder or URL (repeatable).")
@click.option(
    "--wheel-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Offline: a folder with one subfolder of wheels per target; nothing is downloaded.",
)
@click.option("--force", is_flag=True, help="Rebuild even when the content hash label matches.")
@click.option("--dry-run", is_flag=True, help="Only say which images would be built and why; download nothing.")
def images_build(targets, gpu, base_image, index_url, extra_index_urls, find_links, wheel_dir, force, dry_run) -> None:
    """Build the images (offline from wheels downloaded on the host)."""
    from sandbox.images import WheelSource, build_images, build_targets, plan_builds

    chosen = build_targets(tuple(targets), gpu)
    if dry_run:
        for plan in plan_builds(chosen, force):
            verdict = {True: "would build", False: "up to date", None: "would download its wheels, then compare"}
            out_console.print(_safe(f"{plan.tag}: {verdict[plan.build]} ({plan.why})"), highlight=False)
        return
    source = WheelSource(index_url, tuple(extra_index_urls), tuple(find_links), wheel_dir)
    built = build_images(chosen, base_image, source, force, log=lambda line: console.print(line, highlight=False))
    for image in built:
        state = "up to date" if image.skipped else f"built in {image.seconds:.1f} s"
        out_console.print(f"{image.tag}: {state}")


@main.command()
@click.option(
    "--data", "--dataset", "data", type=click.Path(path_type=Path), help="Data set. Default: the shipped one."
)
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs"), show_default=True, help="Run folder.")
@click.option(
    "--min-free", default=1.0, show_default=True, type=click.FloatRange(min=0.0), help="GiB free under --out."
)
@click.option(
    "--isolation",
    type=click.Choice(["runc", "gvisor"]),
    default="runc",
    show_default=True,
    help="gvisor: a missing runsc runtime is a failure, not a warning.",
)
@click.option(
    "--gpus",
    default=None,
    help="The run's --gpus ('all' or ids like 0,1): a missing GPU runtime is a failure, and the GPU images count.",
)
def doctor(data, out, min_free, isolation, gpus) -> None:
    """Check what a run needs (Docker, limits, images, gVisor, GPUs, disk, data set); exit 1 if it is not there."""
    from sandbox.doctor import render, run_checks

    checks = []
    for check in run_checks(data, out, min_free, isolation, gpus=gpus):
        checks.append(check)
        out_console.print(render(check, _safe), highlight=False)
    failed = [check.name for check in checks if check.failed]
    verdict = f"[red]not ready[/red]: fix {', '.join(failed)}" if failed else "[green]ready[/green] for `sandbox run`"
    out_console.print(verdict, highlight=False)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
