"""Submissions as self-contained images: built by `sandbox package --image`, saved with `--save`, and accepted
by `sandbox run` and `sandbox validate` as a `docker save` tar (`NAME.tar`) in place of a folder.
"""

from __future__ import annotations

import io
import re
import tarfile
import tempfile
import zipfile
from pathlib import Path

from docker.errors import APIError, DockerException, ImageNotFound

from sandbox.errors import SandboxError, SubmissionError
from sandbox.runtime.docker import docker_client
from sandbox.store import write_atomically

ID_LABEL = "org.adversarial-sandbox.submission-id"
IMAGE_REPOSITORY = "adversarial-sandbox-submission"


def image_name(submission_id: str, content: str) -> str:
    slug = re.sub(r"[^a-z0-9_.-]+", "-", submission_id.lower()).strip(".-") or "submission"
    return f"{IMAGE_REPOSITORY}/{slug}:{content}"


def build_submission_image(archive: Path, base_image: str, content: str) -> str:
    """FROM the submission's container, with its files at /code: it runs with no mount of its own."""
    client = docker_client(timeout=600)
    submission_id = archive.name.removesuffix(".zip")
    tag = image_name(submission_id, content)
    with tempfile.TemporaryDirectory(prefix="sbx-image-") as tmp:
        context = Path(tmp)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(context / "code")
            for info in zf.infolist():
                if (info.external_attr >> 16) & 0o111:
                    (context / "code" / info.filename).chmod(0o755)
        (context / "Dockerfile").write_text(
            f"FROM {base_image}\nCOPY code/ /code/\nLABEL {ID_LABEL}={submission_id}\nWORKDIR /code\n"
        )
        try:
            client.images.build(path=str(context), tag=tag, rm=True, network_mode="none")
        except (APIError, DockerException) as exc:
            raise SandboxError(f"building {tag} from {base_image} failed: {exc}; is {base_image} available?") from None
    return tag


def save_image(tag: str, dest: Path) -> Path:
    """`docker save` of one image into `dest` (a .tar that `sandbox run` and `validate` accept)."""
    client = docker_client(timeout=600)
    chunks = client.images.get(tag).save(named=True)
    write_atomically(dest, b"".join(chunks))
    return dest


def load_image_submission(tar: Path, dest: Path) -> tuple[Path, str]:
    """Loads a saved submission image and copies its /code into `dest`; returns (dest, image tag)."""
    try:
        client = docker_client(timeout=600)
        with tar.open("rb") as f:
            loaded = client.images.load(f.read())
    except (SandboxError, APIError, OSError) as exc:
        raise SubmissionError(f"{tar}: cannot load it as a `docker save` image ({exc})") from None
    if not loaded or not loaded[0].tags:
        raise SubmissionError(f"{tar}: holds no tagged image; save it with `sandbox package --image --save`")
    tag = loaded[0].tags[0]
    container = client.containers.create(tag, ["true"], network_disabled=True)
    try:
        chunks, _ = container.get_archive("/code/.")
        data = b"".join(chunks)
    except (ImageNotFound, APIError) as exc:
        raise SubmissionError(f"{tar}: the image has no /code folder ({exc})") from None
    finally:
        container.remove(force=True)
    dest.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(dest, filter="data")  # refuses absolute paths, `..` and links leaving dest
    for path in [dest, *dest.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | (0o555 if path.is_dir() else 0o444))
    return dest, tag
