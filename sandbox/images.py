"""Building the runtime images the samples use (`sandbox images build`), offline from a wheel folder.

Wheels are downloaded on the host (containers may not reach a package index) into a cache folder that is also
the Docker build context; each image carries a label with the hash of everything that went into it, so a
rebuild is skipped when nothing changed. Without a registry, the base image is bootstrapped with debootstrap.

Each target is built from its own slice of the Dockerfile (the stages it needs: `base`, `X-build`, `X`), and its
content hash covers only that slice, its pins and its wheels. So the GPU targets, which follow the CPU ones and are
built only on demand (`--gpu`), neither change the CPU images' hashes nor make the classic builder (which runs
every stage before the target) install their gigabytes of wheels when a CPU image is built.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker
import requests
from docker.errors import APIError, ImageNotFound

from sandbox.bundled import dockerfile_dir
from sandbox.errors import ImageBuildError
from sandbox.image_names import IMAGE_VERSION, image_tag
from sandbox.runtime.docker import docker_client

CPU_TARGETS = ("base", "torch-cpu", "tensorflow-cpu")  # what `sandbox images build` builds, and CI with it
GPU_TARGETS = ("torch-gpu", "tensorflow-gpu")  # CUDA from the frameworks' wheels (~3 GB each): `--gpu` only
TARGETS = CPU_TARGETS + GPU_TARGETS  # in Dockerfile order
DEFAULT_BASE_IMAGE = "python:3.11-slim"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"  # PyPI serves torch's CUDA build only
BOOTSTRAP_IMAGE = image_tag("bootstrap-bookworm")
HASH_LABEL = "org.adversarial-sandbox.content-hash"
# The base image is Debian bookworm (glibc 2.36): any manylinux wheel up to 2_28 runs there. Some CUDA wheels
# are tagged only with older ones: nvidia-cuda-cupti 2_25, nvidia-nccl 2_18, nvidia-nvjitlink and -nvrtc 2_12 and
# manylinux2010.
WHEEL_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_25_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_18_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux_2_12_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
)
Log = Callable[[str], None]


def cache_root() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "adversarial-sandbox"
    return Path(os.environ.get("ADVERSARIAL_SANDBOX_CACHE", default))


@dataclass(frozen=True)
class WheelSource:
    """Where `pip download` looks; None keeps pip's own configuration."""

    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()
    wheel_dir: Path | None = None  # an existing folder of wheels per target: no download at all


@dataclass(frozen=True)
class BuiltImage:
    target: str
    tag: str
    skipped: bool
    seconds: float


def build_targets(targets: tuple[str, ...] = (), gpu: bool = False) -> tuple[str, ...]:
    """What `sandbox images build` builds: the named targets, else the CPU ones; `gpu` adds the GPU ones."""
    chosen = set(targets or CPU_TARGETS) | (set(GPU_TARGETS) if gpu else set())
    unknown = sorted(chosen - set(TARGETS))
    if unknown:
        raise ImageBuildError(f"image target {unknown[0]}", "unknown", f"choose from {', '.join(TARGETS)}")
    return tuple(t for t in TARGETS if t in chosen)


_FROM = re.compile(r"FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE)
_COPY_FROM = re.compile(r"--from=(\S+)")


def _dockerfile_stages(text: str) -> tuple[str, dict[str, tuple[str, set[str]]]]:
    """The text before the first stage, and each named stage: its text and the stages it uses (FROM, COPY
    --from). A stage's text starts at the comments just above its FROM line."""
    lines = text.splitlines(keepends=True)
    starts = []
    for number, line in enumerate(lines):
        if _FROM.match(line.strip()):
            start = number
            while start > 0 and (not lines[start - 1].strip() or lines[start - 1].lstrip().startswith("#")):
                start -= 1
            starts.append((start, number))
    preamble = "".join(lines[: starts[0][0]]) if starts else text
    stages: dict[str, tuple[str, set[str]]] = {}
    for index, (start, number) in enumerate(starts):
        end = starts[index + 1][0] if index + 1 < len(starts) else len(lines)
        match = _FROM.match(lines[number].strip())
        assert match is not None
        parent, name = match.group(1), match.group(2) or f"stage-{index}"
        body = "".join(lines[start:end])
        stages[name] = (body, {parent, *_COPY_FROM.findall(body)})
    return preamble, stages


def dockerfile_for(target: str, dockerfile: str | None = None) -> str:
    """The Dockerfile (the shipped one, or the text given) reduced to the stages `target` needs, in their order:
    what its image is built from."""
    preamble, stages = _dockerfile_stages(dockerfile or (dockerfile_dir() / "Dockerfile").read_text())
    if target not in stages:
        raise ImageBuildError(dockerfile_dir() / "Dockerfile", f"has no stage {target}", "reinstall the package")
    needed, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name in stages and name not in needed:
            needed.add(name)
            todo.extend(stages[name][1])
    return preamble + "".join(body for name, (body, _) in stages.items() if name in needed)


def wheel_targets(target: str) -> list[str]:
    """The targets whose wheel folders `target`'s image installs (its own; none for `base`)."""
    text = dockerfile_for(target)
    return [t for t in TARGETS if t != "base" and f"wheels/{t}/" in text]


def _requirements(target: str) -> Path:
    return dockerfile_dir() / "requirements" / f"{target}.txt"


def _pins(target: str) -> list[str]:
    lines = _requirements(target).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def pip_download_command(target: str, dest: Path, source: WheelSource) -> list[str]:
    """`pip download` of a target's pinned wheels for the image's Python (3.11, x86_64), whatever the host's."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        "--python-version",
        "3.11",
        "--implementation",
        "cp",
        "--abi",
        "cp311",
        *[arg for platform in WHEEL_PLATFORMS for arg in ("--platform", platform)],
        "-d",
        str(dest),
        "-r",
        str(_requirements(target)),
    ]
    if source.index_url:
        command += ["--index-url", source.index_url]
    for url in source.extra_index_urls:
        command += ["--extra-index-url", url]
    for link in source.find_links:
        command += ["--find-links", link]
    return command


def prepare_wheels(target: str, context: Path, source: WheelSource, log: Log) -> None:
    """Fills `context/wheels/TARGET` once per set of pins: a marker records what was downloaded."""
    dest = context / "wheels" / target
    marker = dest / ".complete"
    pins_text = "\n".join(_pins(target))
    if marker.is_file() and marker.read_text() == pins_text:
        return
    dest.mkdir(parents=True, exist_ok=True)
    if source.wheel_dir is not None:
        given = Path(source.wheel_dir) / target
        if not given.is_dir():
            raise ImageBuildError(given, "no such folder", "the wheel folder needs one folder of wheels per target")
        for wheel in given.glob("*.whl"):
            shutil.copy2(wheel, dest / wheel.name)
        marker.write_text(pins_text)
        return
    command = pip_download_command(target, dest, source)
    log(f"downloading wheels for {target} into {dest}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImageBuildError(
            f"pip download for {target}",
            f"failed: {last}",
            "check the package index (`sandbox images build --index-url URL`, `--extra-index-url URL`, "
            f"`--find-links DIR`, or pip's own PIP_* settings), or give `--wheel-dir DIR` with the wheels of "
            f"{_requirements(target)} in DIR/{target}/",
        )
    note = cuda_torch_note(target, dest)
    if note:
        log(note)
    marker.write_text(pins_text)


def cuda_torch_note(target: str, wheels: Path) -> str | None:
    """What to do when the CPU torch image got torch's CUDA build (PyPI's only one) and its NVIDIA wheels."""
    if target != "torch-cpu" or not any(wheels.glob("nvidia_*.whl")):
        return None
    return (
        f"{target}: the index gave torch's CUDA build (about 2.8 GB of wheels, for an image that runs on the CPU); "
        f"for the CPU build, empty {wheels} and build again with PIP_EXTRA_INDEX_URL={TORCH_CPU_INDEX} set, or "
        f"`sandbox images build --extra-index-url {TORCH_CPU_INDEX}`"
    )


def _content_hash(target: str, context: Path, base_id: str) -> str:
    """The image's inputs: its slice of the Dockerfile, the base image, and its pins and wheels."""
    digest = hashlib.sha256()
    digest.update(dockerfile_for(target).encode())
    digest.update(base_id.encode())
    for needed in wheel_targets(target):
        digest.update(_requirements(needed).read_bytes())
        for wheel in sorted((context / "wheels" / needed).glob("*.whl")):
            digest.update(wheel.name.encode())
            with wheel.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


ROOT_BUILD_HELP = 'build it once as root: `sudo "$(command -v sandbox)" images build --target base`'


def debootstrap_path() -> str | None:
    """debootstrap, also where Debian puts it outside a normal user's PATH (/usr/sbin)."""
    return shutil.which("debootstrap") or next(
        (path for path in ("/usr/sbin/debootstrap", "/sbin/debootstrap") if os.access(path, os.X_OK)), None
    )


def bootstrap_problem() -> tuple[str, str] | None:
    """Why this process cannot bootstrap a base image, and the fix; None when it can."""
    if debootstrap_path() is None:
        return (
            "it cannot be pulled and debootstrap is missing",
            "run `scripts/install-docker.sh` (it installs debootstrap) or `apt-get install debootstrap`, or name a "
            "base image you have locally",
        )
    if os.geteuid() != 0:
        return "it cannot be pulled, and debootstrap needs root", ROOT_BUILD_HELP
    return None


def bootstrap_base(client: docker.DockerClient, log: Log) -> str:
    """Makes a Debian bookworm image with python3 and venv when no base image can be pulled (about a minute)."""
    try:
        client.images.get(BOOTSTRAP_IMAGE)
        return BOOTSTRAP_IMAGE
    except ImageNotFound:
        pass
    problem = bootstrap_problem()
    if problem is not None:
        raise ImageBuildError("base image", *problem)
    log("bootstrapping a Debian bookworm base image with debootstrap (about a minute)")
    with tempfile.TemporaryDirectory(prefix="sbx-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        debootstrap = debootstrap_path()
        assert debootstrap is not None  # bootstrap_problem checked it
        result = subprocess.run(
            [debootstrap, "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            last = (result.stdout.strip().splitlines() or ["no output"])[-1]
            raise ImageBuildError("debootstrap", f"failed: {last}", "it needs root and a Debian mirror")
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        assert tar.stdout is not None
        client.api.import_image_from_stream(tar.stdout, repository=BOOTSTRAP_IMAGE.split(":")[0], tag=IMAGE_VERSION)
        tar.wait()
    return BOOTSTRAP_IMAGE


def resolve_base_image(client: docker.DockerClient, base_image: str, log: Log) -> str:
    """The given base image if present or pullable; else, for the default, a bootstrapped one."""
    try:
        client.images.get(base_image)
        return base_image
    except ImageNotFound:
        pass
    try:
        log(f"pulling {base_image}")
        client.images.pull(base_image)
        return base_image
    except (APIError, requests.RequestException) as exc:
        if base_image != DEFAULT_BASE_IMAGE:
            raise ImageBuildError(
                f"base image {base_image}",
                f"not local and cannot be pulled ({exc})",
                "`docker load` it first, or leave out --base-image (without Docker Hub the default base is made "
                "with debootstrap)",
            ) from None
        log(f"cannot pull {base_image}: falling back to a debootstrapped Debian bookworm base")
    return bootstrap_base(client, log)


def _write_context(context: Path, target: str) -> None:
    """The target's slice of the Dockerfile and the pins, plus a .dockerignore that leaves out every other
    target's wheels (the context is sent to the daemon whole)."""
    source = dockerfile_dir()
    (context / "Dockerfile").write_text(dockerfile_for(target))
    (context / "requirements").mkdir(exist_ok=True)
    for pins in (source / "requirements").glob("*.txt"):
        shutil.copy2(pins, context / "requirements" / pins.name)
    others = [name for name in TARGETS if name not in wheel_targets(target)]
    (context / ".dockerignore").write_text("".join(f"wheels/{name}\n" for name in others) + "**/.complete\n")


def build_images(
    targets: tuple[str, ...] = ("base", "torch-cpu"),
    base_image: str = DEFAULT_BASE_IMAGE,
    source: WheelSource | None = None,
    force: bool = False,
    log: Log = print,
) -> list[BuiltImage]:
    """Builds the given Dockerfile targets, skipping those whose content hash label already matches."""
    ordered = build_targets(tuple(targets)) if targets else ()
    client = docker_client(timeout=600)
    source = source or WheelSource()
    context = cache_root() / "build"
    context.mkdir(parents=True, exist_ok=True)
    base = resolve_base_image(client, base_image, log)
    base_id = client.images.get(base).id
    built = []
    for target in ordered:
        started = time.monotonic()
        for needed in wheel_targets(target):
            prepare_wheels(needed, context, source, log)
        content_hash = _content_hash(target, context, base_id)
        tag = image_tag(target)
        if not force:
            try:
                if client.images.get(tag).labels.get(HASH_LABEL) == content_hash:
                    built.append(BuiltImage(target, tag, True, time.monotonic() - started))
                    log(f"{tag} is up to date")
                    continue
            except ImageNotFound:
                pass
        _write_context(context, target)
        log(f"building {tag} from {base}")
        stream = client.api.build(
            path=str(context),
            target=target,
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            network_mode="none",
            buildargs={"BASE_IMAGE": base, "CONTENT_HASH": content_hash},
        )
        for chunk in stream:
            if "error" in chunk:
                raise ImageBuildError(tag, f"build failed: {chunk['error'].strip()}")
            line = chunk.get("stream", "").strip()
            if line.startswith("Step "):
                log(f"  {line}")
        built.append(BuiltImage(target, tag, False, time.monotonic() - started))
        log(f"built {tag} in {time.monotonic() - started:.1f} s")
    return built


@dataclass(frozen=True)
class PlannedBuild:
    target: str
    tag: str
    build: bool | None  # None: decided after its wheels are downloaded (no wheel cache to hash yet)
    why: str


def plan_builds(targets: tuple[str, ...], force: bool = False) -> list[PlannedBuild]:
    """What `build_images` would do with each target, found without downloading or building anything."""
    client = docker_client(timeout=60)
    planned = []
    for target in build_targets(targets):
        tag = image_tag(target)
        try:
            label = client.images.get(tag).labels.get(HASH_LABEL)
        except ImageNotFound:
            planned.append(PlannedBuild(target, tag, True, "missing"))
            continue
        if force:
            planned.append(PlannedBuild(target, tag, True, "--force"))
            continue
        stale, why = image_staleness(client, label, target)
        planned.append(PlannedBuild(target, tag, stale, why))
    return planned


def local_base_id(client: docker.DockerClient) -> str | None:
    """The base image `sandbox images build` would use without pulling: the default if here, else the
    debootstrapped one (resolve_base_image's order)."""
    for base in (DEFAULT_BASE_IMAGE, BOOTSTRAP_IMAGE):
        try:
            return client.images.get(base).id
        except ImageNotFound:
            continue
    return None


def image_staleness(client: docker.DockerClient, label: str | None, target: str) -> tuple[bool | None, str]:
    """Whether a rebuild would change the image: (False, ...) current, (True, why) stale, (None, why) unknown.

    The content hash is the one `build_images` labels images with, over the target's slice of the Dockerfile, the
    base image and the cached wheels; a wheel cache whose pins no longer match the requirements means the next
    build downloads new wheels.
    """
    context = cache_root() / "build"
    for needed in wheel_targets(target):
        marker = context / "wheels" / needed / ".complete"
        if not marker.is_file():
            return None, f"not compared: no wheel cache in {marker.parent}"
        if marker.read_text() != "\n".join(_pins(needed)):
            return True, f"the pins of {needed} changed since the build"
    base_id = local_base_id(client)
    if base_id is None:
        return None, f"not compared: neither {DEFAULT_BASE_IMAGE} nor {BOOTSTRAP_IMAGE} is here"
    if label != _content_hash(target, context, base_id):
        return True, "its content hash differs from the Dockerfile, base image and wheels here"
    return False, "current"
