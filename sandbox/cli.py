"""The `sandbox` command: parses options, calls the library, prints. No logic lives only here."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from sandbox.competition import Events, RunOptions, rebuild_report, resolve_options, run_competition
from sandbox.errors import SandboxError
from sandbox.plan import parse_epsilons
from sandbox.runtime.base import Limits
from sandbox.store import PieceRecord

console = Console(stderr=True)
out_console = Console()
_SIZE = re.compile(r"^\d+[bkmg]?$", re.IGNORECASE)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _safe(text: object) -> str:
    """Untrusted text (ids, paths, a submission's stderr) for the terminal: no escape sequences, no Rich markup."""
    return escape(_CONTROL.sub("?", str(text)))


def _size(ctx, param, value: str | None) -> str | None:
    if value is not None and not _SIZE.match(value):
        raise click.BadParameter(f"'{value}': use a size like 512m or 4g")
    return value


def _limits(time_limit: float, min_time: float, memory: str, cpus: float, pids: int, output_size: str) -> Limits:
    """The per-piece limits from the flags that `run` and `validate` share, so both apply the same ones."""
    return Limits(
        time_per_100_images=time_limit, min_time=min_time, memory=memory, cpus=cpus, pids=pids, output_size=output_size
    )


def _epsilons(ctx, param, value: str) -> tuple[int, ...]:
    try:
        return parse_epsilons(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class RichEvents(Events):
    """Live progress with ETA, one line per failed piece with the tail of its stderr."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task = None

    def message(self, text: str) -> None:
        console.print(f"[dim]{_safe(text)}[/dim]", highlight=False)

    def warning(self, text: str) -> None:
        console.print(f"[yellow]warning:[/yellow] {_safe(text)}", highlight=False, soft_wrap=True)

    def phase(self, name: str, total: int, already_done: int) -> None:
        self.close()
        if already_done:
            self.message(f"{name}: {already_done} of {total} pieces already done in this run folder")
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
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
                soft_wrap=True,
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


def _leaderboard(title: str, header: str, rows: list, normalised: dict[str, float]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("#", justify="right")
    table.add_column(header)
    table.add_column("Score", justify="right")
    table.add_column("Normalised", justify="right")
    for rank, (name, score) in enumerate(rows, start=1):
        table.add_row(str(rank), _safe(name), str(score), f"{normalised.get(name, 0.0):.3f}")
    return table


def print_leaderboards(results: dict) -> None:
    rankings, normalised = results["rankings"], results["normalised_scores"]
    out_console.print(_leaderboard("Defenses", "DefenseName", rankings["defense"], normalised["defense"]))
    out_console.print(_leaderboard("Attacks", "AttackName", rankings["attack"], normalised["attack"]))
    out_console.print(
        _leaderboard("Targeted attacks", "AttackName", rankings["targeted_attack"], normalised["targeted_attack"])
    )


class SandboxCommands(click.Group):
    """Every command's user-facing error (SandboxError) becomes one line on stderr and exit 1, in one place."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SandboxError as exc:
            console.print(f"[red]error:[/red] {_safe(exc)}", highlight=False, soft_wrap=True)
            sys.exit(1)


def limit_options(command):
    """The per-piece limits and the runtime, declared once: `validate` checks exactly as `run` runs."""
    options = [
        click.option(
            "--time-limit",
            default=500.0,
            show_default=True,
            type=click.FloatRange(min=0.1),
            help="Seconds per 100 images of a piece; the container is killed at the limit.",
        ),
        click.option(
            "--min-time-limit",
            default=60.0,
            show_default=True,
            type=click.FloatRange(min=0.0),
            help="Seconds every piece gets at least, however few its images (start-up time does not scale).",
        ),
        click.option("--memory", default="4g", show_default=True, callback=_size, help="Memory per container."),
        click.option(
            "--cpus",
            default=None,
            type=click.FloatRange(min=0.01),
            help="CPUs per container. Default: the machine's cores divided by the pieces run at once.",
        ),
        click.option("--pids", default=256, show_default=True, type=click.IntRange(8), help="Processes per container."),
        click.option(
            "--output-size",
            default="512m",
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
    for option in reversed(options):
        command = option(command)
    return command


@click.group(cls=SandboxCommands)
@click.version_option(package_name="adversarial-sandbox")
def main() -> None:
    """Score adversarial attacks against defenses, each submission in its own locked-down container."""


@main.command()
@click.option(
    "--attacks",
    "attacks",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder of attack submissions (repeatable). Default: the shipped samples.",
)
@click.option(
    "--targeted-attacks",
    "targeted_attacks",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder of targeted attack submissions (repeatable).",
)
@click.option(
    "--defenses",
    "defenses",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Folder of defense submissions (repeatable).",
)
@click.option("--dataset", type=click.Path(path_type=Path), help="Data set folder. Default: shipped Fashion-MNIST 1k.")
@click.option("--out", type=click.Path(path_type=Path), help="Run folder; an existing one is resumed.")
@click.option(
    "--epsilon",
    default="16",
    show_default=True,
    callback=_epsilons,
    help="L-inf budget in pixel units, or a list used in turn per batch (4,8,12,16).",
)
@click.option(
    "--batch-size",
    default=100,
    show_default=True,
    type=click.IntRange(1),
    help="Images per batch; each batch gets one epsilon.",
)
@click.option(
    "--attack-piece-size",
    default=1000,
    show_default=True,
    type=click.IntRange(1),
    help="Images per attack container: batches with the same epsilon run together up to this many.",
)
@click.option(
    "--defense-batch-size",
    default=20_000,
    show_default=True,
    type=click.IntRange(1),
    help="At most this many distinct images per defense piece; below it, as few pieces as keep --jobs busy.",
)
@click.option("--seed", default=0, show_default=True, type=int, help="Run seed; each piece gets SANDBOX_SEED from it.")
@click.option(
    "--jobs",
    default=None,
    type=click.IntRange(1),
    help="Pieces run at once. Default: one per core, as many as memory holds at --memory each.",
)
@click.option("--gpus", default=None, help="GPUs for the containers: 'all' or ids like 0,1 (one piece per GPU).")
@limit_options
@click.option(
    "--docker-wait",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Seconds to wait for a Docker daemon that stopped answering (a restart) before stopping the run.",
)
@click.option("--strict", is_flag=True, help="Exit 1 when a submission was left out or a piece failed.")
@click.option("--no-build", is_flag=True, help="Do not build missing sandbox images; leave their submissions out.")
def run(
    attacks,
    targeted_attacks,
    defenses,
    dataset,
    out,
    epsilon,
    batch_size,
    attack_piece_size,
    defense_batch_size,
    seed,
    jobs,
    gpus,
    runtime_name,
    isolation,
    time_limit,
    min_time_limit,
    memory,
    cpus,
    pids,
    output_size,
    docker_wait,
    strict,
    no_build,
) -> None:
    """Run every attack on the data set and every defense on their images; write scores."""
    limits = _limits(time_limit, min_time_limit, memory, cpus, pids, output_size)
    options = RunOptions(
        attacks=tuple(attacks) or None,
        targeted_attacks=tuple(targeted_attacks) or None,
        defenses=tuple(defenses) or None,
        dataset=dataset,
        out=out,
        epsilon=epsilon,
        batch_size=batch_size,
        attack_piece_size=attack_piece_size,
        defense_batch_size=defense_batch_size,
        seed=seed,
        jobs=jobs,
        gpus=gpus,
        runtime=runtime_name,
        isolation=isolation,
        limits=limits,
        build_images=not no_build,
        docker_wait=docker_wait,
    )
    options = resolve_options(options)
    limits = options.limits
    console.print(
        f"run folder: [bold]{options.out}[/bold]  (resume an interrupted run with --out {options.out})", highlight=False
    )
    console.print(
        f"limits per piece: {time_limit:g} s per 100 images (at least {min_time_limit:g} s), memory {memory}, "
        f"{limits.cpus:g} CPUs, {pids} processes, output {output_size}, network none; "
        f"epsilon {','.join(map(str, epsilon))}; jobs {options.jobs}; "
        f"runtime {runtime_name}" + (f"/{isolation}" if runtime_name == "docker" else ""),
        highlight=False,
    )
    events = RichEvents()
    try:
        result = run_competition(options, events)
    except SandboxError:
        events.close()  # the progress display ends before the error line
        raise
    except KeyboardInterrupt:
        events.close()
        console.print(f"[red]interrupted[/red]: resume with --out {options.out}", highlight=False)
        sys.exit(130)
    events.close()
    print_leaderboards(result.results)
    problems = len(result.left_out) + sum(f["pieces_failed"] for f in result.results["failures"].values())
    console.print(f"outputs: [bold]{result.out}[/bold] (results.json, NIPS 2017 score files)", highlight=False)
    if problems:
        console.print(
            f"{len(result.left_out)} submissions left out, "
            f"{problems - len(result.left_out)} pieces failed: see results.json",
            highlight=False,
        )
    sys.exit(1 if strict and problems else 0)


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
def validate(
    submission,
    dataset,
    images,
    epsilon,
    time_limit,
    min_time_limit,
    memory,
    cpus,
    pids,
    output_size,
    runtime_name,
    isolation,
    as_json,
    strict,
) -> None:
    """Check a submission exactly as the organizers' run will, trial run included."""
    import json

    from sandbox.validate import validate_submission

    limits = _limits(time_limit, min_time_limit, memory, cpus, pids, output_size)
    report = validate_submission(submission, dataset, limits, epsilon, images, runtime_name, isolation=isolation)
    if as_json:
        out_console.print_json(json.dumps(report.to_dict(strict)))
    else:
        for finding in report.findings:
            color = "red" if finding.level == "error" else "yellow"
            out_console.print(
                f"[{color}]{finding.level}:[/{color}] {_safe(finding.where)}: {_safe(finding.message)}",
                highlight=False,
                soft_wrap=True,
            )
        trial = report.trial
        if trial:
            peak = trial.get("memory_peak_bytes")
            memory_text = f"{peak / 1024**2:.0f} MiB of {trial['memory_limit']}" if peak else "not measured"
            out_console.print(
                f"trial: {trial['images']} images in {trial['wall_s']:.1f} s; forecast at most "
                f"{trial['forecast_s_per_100_images']:g} s per 100 images (limit {trial['limit_s_per_100_images']:g}), "
                f"{trial['forecast_full_dataset_s']:g} s for the whole data set; memory peak {memory_text}",
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
    from sandbox.fashion_mnist import FashionMnistMissing

    try:
        path = build_fashion_mnist(out, per_class=per_class, seed=seed)
    except (SandboxError, FashionMnistMissing) as exc:
        console.print(f"[red]error:[/red] {_safe(exc)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    out_console.print(f"wrote {path}")


@dataset.command("check")
@click.argument("folder", type=click.Path(path_type=Path))
def dataset_check(folder: Path) -> None:
    """Check a data set folder (SPEC 3)."""
    from sandbox.dataset import load_dataset

    ds = load_dataset(folder)
    out_console.print(
        f"{ds.root}: {len(ds.records)} images, {ds.size[0]}x{ds.size[1]} {ds.mode}, "
        f"{ds.num_classes} classes ({ds.name})"
    )


@main.group()
def images() -> None:
    """Build the runtime images the samples use."""


@images.command("build")
@click.option(
    "--target",
    "targets",
    multiple=True,
    type=click.Choice(["base", "torch-cpu", "tensorflow-cpu"]),
    help="Image to build (repeatable). Default: all.",
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
def images_build(targets, base_image, index_url, extra_index_urls, find_links, wheel_dir, force) -> None:
    """Build the images (offline from wheels downloaded on the host)."""
    from sandbox.images import TARGETS, WheelSource, build_images

    source = WheelSource(index_url, tuple(extra_index_urls), tuple(find_links), wheel_dir)
    built = build_images(
        tuple(targets) or TARGETS, base_image, source, force, log=lambda line: console.print(line, highlight=False)
    )
    for image in built:
        state = "up to date" if image.skipped else f"built in {image.seconds:.1f} s"
        out_console.print(f"{image.tag}: {state}")


if __name__ == "__main__":
    main()
