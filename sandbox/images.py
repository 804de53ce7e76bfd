"""Building the runtime images the samples use (`sandbox images build`), offline from a wheel folder.

Wheels are downloaded on the host (containers may not reach a package index) into a cache folder that is also
the Docker build context; each image carries a label with the hash of everything that went into it, so a
rebuild is skipped when nothing changed. Without a registry, the base image is bootstrapped with debootstrap.
"""

from __future__ import annotations

import hashlib
import os
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

TARGETS = ("base", "torch-cpu", "tensorflow-cpu")  # in Dockerfile order: the classic builder runs earlier stages
DEFAULT_BASE_IMAGE = "python:3.11-slim"
BOOTSTRAP_IMAGE = image_tag("bootstrap-bookworm")
HASH_LABEL = "org.adversarial-sandbox.content-hash"
WHEEL_PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
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


def _requirements(target: str) -> Path:
    return dockerfile_dir() / "requirements" / f"{target}.txt"


def _pins(target: str) -> list[str]:
    lines = _requirements(target).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


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
    log(f"downloading wheels for {target} into {dest}")
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise ImageBuildError(
            f"pip download for {target}",
            f"failed: {last}",
            f"check the package index and find-links, or give a wheel folder with {_requirements(target)}",
        )
    marker.write_text(pins_text)


def _content_hash(target: str, context: Path, base_id: str) -> str:
    digest = hashlib.sha256()
    digest.update((dockerfile_dir() / "Dockerfile").read_bytes())
    digest.update(base_id.encode())
    for index in range(TARGETS.index(target) + 1):
        previous = TARGETS[index]
        if previous == "base":
            continue
        digest.update(_requirements(previous).read_bytes())
        for wheel in sorted((context / "wheels" / previous).glob("*.whl")):
            digest.update(wheel.name.encode())
            with wheel.open("rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def bootstrap_base(client: docker.DockerClient, log: Log) -> str:
    """Makes a Debian bookworm image with python3 and venv when no base image can be pulled (about a minute)."""
    try:
        client.images.get(BOOTSTRAP_IMAGE)
        return BOOTSTRAP_IMAGE
    except ImageNotFound:
        pass
    if shutil.which("debootstrap") is None:
        raise ImageBuildError(
            "base image",
            "it cannot be pulled and debootstrap is missing",
            "run `scripts/install-docker.sh` (it installs debootstrap) or `apt-get install debootstrap`, or name a "
            "base image you have locally",
        )
    log("bootstrapping a Debian bookworm base image with debootstrap (about a minute)")
    with tempfile.TemporaryDirectory(prefix="sbx-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3,python3-venv", "bookworm", str(rootfs)],
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
            raise ImageBuildError(f"base image {base_image}", f"not local and cannot be pulled ({exc})") from None
        log(f"cannot pull {base_image}: falling back to a debootstrapped Debian bookworm base")
    return bootstrap_base(client, log)


def _write_context(context: Path, target: str) -> None:
    """The Dockerfile and pins, plus a .dockerignore that leaves out the wheels no stage up to `target` needs."""
    source = dockerfile_dir()
    shutil.copy2(source / "Dockerfile", context / "Dockerfile")
    (context / "requirements").mkdir(exist_ok=True)
    for pins in (source / "requirements").glob("*.txt"):
        shutil.copy2(pins, context / "requirements" / pins.name)
    later = TARGETS[TARGETS.index(target) + 1 :]
    (context / ".dockerignore").write_text("".join(f"wheels/{name}\n" for name in later) + "**/.complete\n")


def build_images(
    targets: tuple[str, ...] = ("base", "torch-cpu"),
    base_image: str = DEFAULT_BASE_IMAGE,
    source: WheelSource | None = None,
    force: bool = False,
    log: Log = print,
) -> list[BuiltImage]:
    """Builds the given Dockerfile targets, skipping those whose content hash label already matches."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ImageBuildError(f"image target {unknown[0]}", "unknown", f"choose from {', '.join(TARGETS)}")
    client = docker_client(timeout=600)
    source = source or WheelSource()
    context = cache_root() / "build"
    context.mkdir(parents=True, exist_ok=True)
    base = resolve_base_image(client, base_image, log)
    base_id = client.images.get(base).id
    ordered = [t for t in TARGETS if t in targets]
    built = []
    for target in ordered:
        started = time.monotonic()
        for needed in TARGETS[1 : TARGETS.index(target) + 1]:
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

    The content hash is the one `build_images` labels images with, over the Dockerfile, the base image and the
    cached wheels; a wheel cache whose pins no longer match the requirements means the next build downloads new
    wheels.
    """
    context = cache_root() / "build"
    for needed in TARGETS[1 : TARGETS.index(target) + 1]:
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
