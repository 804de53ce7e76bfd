"""Submissions as self-contained images: built by `sandbox package --image`, saved with `--save`, and accepted
by `sandbox run` and `sandbox validate` as a `docker save` tar (`NAME.tar`) in place of a folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import posixpath
import re
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import BinaryIO

from docker import DockerClient
from docker.errors import APIError, DockerException, ImageNotFound

from sandbox.errors import SandboxError, SubmissionError, one_line
from sandbox.runtime.docker import docker_client
from sandbox.submission import submission_id

ID_LABEL = "org.adversarial-sandbox.submission-id"
ARCHIVE_LABEL = "org.adversarial-sandbox.archive-sha256"
IMAGE_REPOSITORY = "adversarial-sandbox-submission"
TAG_FILES = {"manifest.json", "repositories", "index.json", "oci-layout"}  # each can name tags: ours replaces them
SAFE_NAME = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")  # all that `docker save` writes
MAX_FILES = 10_000  # `docker save` writes a few per layer, and an image has at most 127 layers
MAX_JSON_BYTES = 8 << 20


def image_name(submission_id: str, content: str) -> str:
    slug = re.sub(r"[^a-z0-9_.-]+", "-", submission_id.lower()).strip(".-") or "submission"
    return f"{IMAGE_REPOSITORY}/{slug}:{content}"


def build_submission_image(archive: Path, base_image: str, content: str) -> str:
    """FROM the submission's container, with its files at /code: it runs with no mount of its own.

    The tag names the image id, as `load_image_submission` does, so a saved image loads under the same tag;
    `content` (the archive's hash) is kept as a label to tell which archive it was built from.
    """
    client = docker_client(timeout=600)
    sub_id = archive.name.removesuffix(".zip")
    with tempfile.TemporaryDirectory(prefix="sbx-image-") as tmp:
        context = Path(tmp)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(context / "code")
            for info in zf.infolist():
                if (info.external_attr >> 16) & 0o111:
                    (context / "code" / info.filename).chmod(0o755)
        # The labels go through the API, not the Dockerfile: an id may hold spaces or `$`.
        (context / "Dockerfile").write_text(f"FROM {base_image}\nCOPY code/ /code/\nWORKDIR /code\n")
        labels = {ID_LABEL: sub_id, ARCHIVE_LABEL: content}
        try:
            image, _ = client.images.build(path=str(context), rm=True, network_mode="none", labels=labels)
            return _tag(client, image.id, sub_id)
        except (APIError, DockerException) as exc:
            why = f"building the image of {sub_id} from {base_image} failed: {exc}"
            raise SandboxError(base_image, why, "is it available? (`sandbox images build`)") from None


def save_image(tag: str, dest: Path) -> Path:
    """`docker save` of one image into `dest` (a .tar that `sandbox run` and `validate` accept).

    Streamed to disk: with its base layers the image is often a gigabyte.
    """
    client = docker_client(timeout=600)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            for chunk in client.images.get(tag).save(named=True):
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)  # no half-written tar that `sandbox run` would pick up
        raise
    return dest


def load_image_submission(tar: Path, dest: Path) -> tuple[Path, str]:
    """Loads a saved submission image and copies its /code into `dest`; returns (dest, image tag).

    The tags inside the tar are never applied: `docker load` would move any tag it names, the sandbox's own
    images included, for every team. Docker gets a copy of the tar whose manifest names no tag, and the image
    is tagged here, under this submission's name.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=dest.parent) as copy:  # beside the run, not in a /tmp that may be memory
        image_id = _copy_untagged(tar, copy)
        copy.seek(0)
        client = docker_client(timeout=600)  # an unreachable daemon is the host's fault, not the submission's
        try:  # a file object is streamed as the request body
            problems = [chunk["error"] for chunk in client.api.load_image(copy, quiet=True) if "error" in chunk]
            if not problems:
                client.images.get(image_id)
        except ImageNotFound:
            raise _refusal(tar, "Docker did not load the image its manifest names") from None
        except (APIError, DockerException, OSError) as exc:
            raise SubmissionError(tar, f"cannot load it as a `docker save` image ({one_line(exc)})") from None
    if problems:
        raise SubmissionError(tar, f"Docker refused to load it ({one_line(problems[0])})")
    tag = _tag(client, image_id, submission_id(tar))
    container = client.containers.create(image_id, ["true"], network_disabled=True)
    try:
        chunks, _ = container.get_archive("/code/.")
        data = b"".join(chunks)
    except (ImageNotFound, APIError) as exc:
        raise SubmissionError(tar, f"the image has no /code folder ({one_line(exc)})") from None
    finally:
        container.remove(force=True, v=True)  # with the anonymous volumes of the image's VOLUMEs
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(dest, filter="data")  # refuses absolute paths, `..` and links leaving dest
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return dest, tag


def _tag(client: DockerClient, image_id: str, submission_id: str) -> str:
    """Our own tag, named after the image id: whatever a tar calls itself, this names what was checked."""
    tag = image_name(submission_id, image_id.removeprefix("sha256:")[:12])
    repository, _, name = tag.rpartition(":")
    client.api.tag(image_id, repository, name)
    return tag


def _refusal(tar: Path, why: str) -> SubmissionError:
    return SubmissionError(tar, f"{why}", "save it with `sandbox package --image --save`")


def _copy_untagged(tar: Path, out: BinaryIO) -> str:
    """Writes the files of a `docker save` tar into `out`, with a manifest of our own that names no tag; returns
    the image id (`sha256:` and the hash of its config, checked here).

    Docker reads only this copy, never the submitted tar: Python's and Go's tar readers disagree on crafted
    headers (a PAX path beside a GNU long name), so a check of the submitted tar alone could be shown one
    manifest while Docker applies another.
    """
    try:
        src = tarfile.open(tar, "r:")  # reads headers on demand, and file data only when asked
    except (tarfile.TarError, OSError) as exc:
        raise _refusal(tar, f"not a `docker save` tar ({one_line(exc)})") from None
    try:
        with src:
            return _checked_copy(tar, src, out)
    except tarfile.TarError as exc:  # a header or a file cut short
        raise _refusal(tar, f"not a whole `docker save` tar ({one_line(exc)})") from None


def _checked_copy(tar: Path, src: tarfile.TarFile, out: BinaryIO) -> str:
    members = _members(tar, src)
    config, layers = _manifest(tar, src, members)
    digest = posixpath.basename(config).removesuffix(".json")
    member = members.get(config)
    if member is None or not member.isreg() or not re.fullmatch("[0-9a-f]{64}", digest):
        raise _refusal(tar, f"its manifest names the config {one_line(config)[:80]!r}, not a file in the tar")
    if hashlib.sha256(_read(tar, src, member)).hexdigest() != digest:  # Docker names the image by this hash
        raise _refusal(tar, "its image config does not match its digest")
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as copy:
        for name, entry in members.items():
            if name not in TAG_FILES:
                _copy_member(copy, src, name, entry)
        data = json.dumps([{"Config": config, "RepoTags": [], "Layers": layers}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        copy.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def _manifest(tar: Path, src: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> tuple[str, list[str]]:
    """The config and layers of the one image in the tar; refuses any tag outside the submission namespace,
    which can only be a mistake or an attempt to replace another image."""
    if "manifest.json" not in members:
        raise _refusal(tar, "holds no manifest.json")
    manifest = _read_json(tar, src, members["manifest.json"])
    if not isinstance(manifest, list) or len(manifest) != 1 or not isinstance(manifest[0], dict):
        count = len(manifest) if isinstance(manifest, list) else 0
        raise _refusal(tar, f"its manifest.json names {count} images, not one")
    config, layers, tags = manifest[0].get("Config"), manifest[0].get("Layers"), manifest[0].get("RepoTags")
    repositories = _read_json(tar, src, members["repositories"]) if "repositories" in members else {}
    if not (
        isinstance(config, str)
        and isinstance(layers, list)
        and all(isinstance(layer, str) for layer in layers)
        and isinstance(tags or [], list)
        and isinstance(repositories, dict)
        and all(isinstance(names, dict) for names in repositories.values())
    ):
        raise _refusal(tar, "its manifest.json or repositories is not what `docker save` writes")
    tags = [*(tags or []), *(f"{repo}:{name}" for repo, names in repositories.items() for name in names)]
    foreign = [tag for tag in tags if not (isinstance(tag, str) and tag.startswith(f"{IMAGE_REPOSITORY}/"))]
    if foreign:
        raise _refusal(tar, f"it names the image {one_line(foreign[0])[:80]!r}, outside {IMAGE_REPOSITORY}/")
    return posixpath.normpath(config).lstrip("/"), layers


def _members(tar: Path, src: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The tar's files by the name Docker's untar gives them; refuses what `docker save` never writes."""
    members: dict[str, tarfile.TarInfo] = {}
    for member in src:
        if len(members) >= MAX_FILES:
            raise _refusal(tar, f"holds over {MAX_FILES} files")
        name = posixpath.normpath(member.name).lstrip("/")
        if name == ".":
            continue
        if not SAFE_NAME.fullmatch(name) or ".." in name.split("/") or name in members:
            raise _refusal(tar, f"holds an unexpected or repeated file {one_line(member.name)[:80]!r}")
        if member.issym() or member.islnk():
            if not SAFE_NAME.fullmatch(member.linkname.lstrip("/")):
                raise _refusal(tar, f"holds an unexpected link {one_line(member.name)[:80]!r}")
        elif not (member.isreg() or member.isdir()):
            raise _refusal(tar, f"holds a special file {one_line(member.name)[:80]!r}")
        members[name] = member
    links = {name for name, member in members.items() if member.issym() or member.islnk()}
    for name in members:
        parts = name.split("/")
        if any("/".join(parts[:i]) in links for i in range(1, len(parts))):
            raise _refusal(tar, f"holds {name!r} under a link, where Docker would write it elsewhere")
    return members


def _read(tar: Path, src: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    f = src.extractfile(member)
    if f is None or member.size > MAX_JSON_BYTES:
        raise _refusal(tar, f"its {member.name!r} is not a file of at most {MAX_JSON_BYTES} bytes")
    return f.read()


def _read_json(tar: Path, src: tarfile.TarFile, member: tarfile.TarInfo) -> object:
    try:
        return json.loads(_read(tar, src, member))
    except ValueError:
        raise _refusal(tar, f"its {member.name!r} is not valid JSON") from None


def _copy_member(copy: tarfile.TarFile, src: tarfile.TarFile, name: str, member: tarfile.TarInfo) -> None:
    """A fresh header with only what `docker load` reads: name, type, size, link target."""
    info = tarfile.TarInfo(name)
    info.mtime = max(int(member.mtime), 0)
    if member.isdir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        copy.addfile(info)
    elif member.issym() or member.islnk():
        info.type, info.linkname = member.type, member.linkname
        if member.islnk():
            info.linkname = posixpath.normpath(member.linkname).lstrip("/")
        copy.addfile(info)
    else:
        info.size, info.mode = member.size, 0o644
        copy.addfile(info, src.extractfile(member))
