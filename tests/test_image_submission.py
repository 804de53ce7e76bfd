"""Saved submission images (`docker save` tars): loading one never moves a tag, the sandbox's own images above all.

`docker load` applies every tag a tar's manifest names, so a tar naming adversarial-sandbox/base:0.1 would replace
the sandbox's keeper image for every team. The refusals are checked on small crafted tars; the loads on a real
image, saved by `sandbox package --image --save`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
from docker.errors import ImageNotFound

from sandbox.errors import SubmissionError
from sandbox.image_names import image_tag
from sandbox.package import package_submission
from sandbox.submission import load_submission
from sandbox.submission_image import image_name, load_image_submission
from tests.submissions import BASE, NOOP_ATTACK, write_submission

FIX = "save it with `sandbox package --image --save`"
CONFIG = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
CONFIG_FILE = f"{hashlib.sha256(CONFIG).hexdigest()}.json"


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _manifest(*tags: str, config: str = CONFIG_FILE) -> dict:
    return {"Config": config, "RepoTags": list(tags), "Layers": []}


def _refusal(tar: Path, dest: Path) -> str:
    with pytest.raises(SubmissionError) as caught:
        load_image_submission(tar, dest)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(tar)) and message.endswith(FIX), message
    return message


@pytest.mark.parametrize("tag", [BASE, image_tag("torch-cpu"), "python:3.11-slim", "ubuntu"])
def test_a_tar_naming_an_image_outside_the_namespace_is_refused_in_one_line(tmp_path, tag):
    manifest = [_manifest("adversarial-sandbox-submission/mine:1", tag)]
    tar = _write_tar(
        tmp_path / "mine.tar", [_file(CONFIG_FILE, CONFIG), _file("manifest.json", json.dumps(manifest).encode())]
    )
    assert repr(tag) in _refusal(tar, tmp_path / "unpacked" / "mine")
    assert not (tmp_path / "unpacked" / "mine").exists()


SYMLINK = tarfile.TarInfo("d")
SYMLINK.type, SYMLINK.linkname = tarfile.SYMTYPE, "."
BROKEN = {
    "no manifest": ([_file(CONFIG_FILE, CONFIG)], "holds no manifest.json"),
    "two images": (
        [_file(CONFIG_FILE, CONFIG), _file("manifest.json", json.dumps([_manifest(), _manifest()]).encode())],
        "names 2 images, not one",
    ),
    "a foreign tag in repositories": (
        [
            _file(CONFIG_FILE, CONFIG),
            _file("manifest.json", json.dumps([_manifest()]).encode()),
            _file("repositories", json.dumps({"adversarial-sandbox/base": {"0.1": "0" * 64}}).encode()),
        ],
        "'adversarial-sandbox/base:0.1'",
    ),
    "a config that is not its digest": (
        [
            _file(f"{'0' * 64}.json", CONFIG),
            _file("manifest.json", json.dumps([_manifest(config=f"{'0' * 64}.json")]).encode()),
        ],
        "config does not match its digest",
    ),
    "a manifest written through a link": (
        [_file(CONFIG_FILE, CONFIG), (SYMLINK, None), _file("d/manifest.json", json.dumps([_manifest(BASE)]).encode())],
        "under a link",
    ),
    "a repeated file": (
        [_file(CONFIG_FILE, CONFIG), _file("manifest.json", b"[]"), _file("./manifest.json", b"[]")],
        "repeated file",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_a_tar_that_is_not_one_saved_image_is_refused_in_one_line(tmp_path, case):
    entries, fragment = BROKEN[case]
    assert fragment in _refusal(_write_tar(tmp_path / "broken.tar", entries), tmp_path / "unpacked" / "broken")


def _hidden(go_name: str, python_name: str, data: bytes) -> bytes:
    """One tar member that Go (so Docker) reads as `go_name` and Python's tarfile as `python_name`: a PAX path
    followed by a GNU long name, of which Go keeps the long name and Python the PAX path."""

    def header(name: str, kind: bytes, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.type, info.size = kind, size
        return info.tobuf(format=tarfile.USTAR_FORMAT)

    def padded(block: bytes) -> bytes:
        return block + b"\0" * (-len(block) % tarfile.BLOCKSIZE)

    body = f"path={python_name}\n"
    length = len(body) + 2
    while len(f"{length} {body}") != length:
        length = len(f"{length} {body}")
    record, long_name = f"{length} {body}".encode(), go_name.encode() + b"\0"
    return (
        header("././@PaxHeader", tarfile.XHDTYPE, len(record))
        + padded(record)
        + header("././@LongLink", tarfile.GNUTYPE_LONGNAME, len(long_name))
        + padded(long_name)
        + header("placeholder", tarfile.REGTYPE, len(data))
        + padded(data)
    )


def _rewritten(saved: Path, dest: Path, tags: list[str], hidden_tags: list[str] | None = None) -> Path:
    """A copy of a saved image whose manifest names `tags`; `hidden_tags` adds a second manifest that only Docker
    sees, after the one Python sees."""
    with tarfile.open(saved) as src, tarfile.open(dest, "w") as out:
        for member in src:
            if member.name == "manifest.json":
                manifest = json.load(src.extractfile(member))
            elif member.name != "repositories":
                out.addfile(member, src.extractfile(member) if member.isreg() else None)
        info, data = _file("manifest.json", json.dumps([dict(manifest[0], RepoTags=tags)]).encode())
        out.addfile(info, io.BytesIO(data))
        if hidden_tags is not None:
            raw = _hidden(
                "manifest.json", "blobs/decoy", json.dumps([dict(manifest[0], RepoTags=hidden_tags)]).encode()
            )
            out.fileobj.write(raw)
            out.offset += len(raw)
    return dest


@pytest.fixture(scope="module")
def saved(tmp_path_factory, docker_ready) -> Iterator[tuple[Path, str]]:
    """A real submission image saved by `package --image --save`, then removed so that each test loads it.

    Afterwards the base image gets its own id back, should a test have moved its tag, and the submission image is
    removed by id (never a runtime image: its id is not theirs)."""
    client = docker.from_env()
    base_id = client.images.get(BASE).id
    parent = tmp_path_factory.mktemp("saved")
    folder = write_submission(parent / "src", "tar_probe", "attack", NOOP_ATTACK)
    result = package_submission(folder, parent / "tar_probe.zip", save=parent / "tar_probe.tar")
    assert result.image and result.saved_image
    image_id = client.images.get(result.image).id
    assert result.image == image_name("tar_probe", image_id.removeprefix("sha256:")[:12])
    client.images.remove(image_id, force=True)
    yield result.saved_image, image_id
    if client.images.get(BASE).id != base_id:
        client.images.get(base_id).tag(*BASE.rsplit(":", 1))
    try:
        client.images.remove(image_id, force=True)
    except ImageNotFound:
        pass


def test_a_saved_image_loads_under_our_tag_and_never_under_its_own(saved, tmp_path):
    tar, image_id = saved
    client = docker.from_env()
    crafted = _rewritten(tar, tmp_path / "honest.tar", ["adversarial-sandbox-submission/someone-else:1"])
    submission = load_submission(crafted, tmp_path / "unpacked")
    tag = image_name("honest", image_id.removeprefix("sha256:")[:12])
    assert submission.metadata.container == tag and client.images.get(tag).id == image_id
    assert (submission.root / "run.sh").read_text() == NOOP_ATTACK
    with pytest.raises(ImageNotFound):
        client.images.get("adversarial-sandbox-submission/someone-else:1")


def test_a_saved_image_naming_the_base_image_is_refused_and_base_keeps_its_image(saved, tmp_path):
    tar, image_id = saved
    client = docker.from_env()
    base_id = client.images.get(BASE).id
    crafted = _rewritten(tar, tmp_path / "hostile.tar", ["adversarial-sandbox-submission/hostile:1", BASE])
    with pytest.raises(SubmissionError) as caught:
        load_submission(crafted, tmp_path / "unpacked")
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{crafted}: ") and repr(BASE) in message and FIX in message
    assert client.images.get(BASE).id == base_id != image_id


def test_a_manifest_only_docker_can_see_is_never_read(saved, tmp_path):
    """The copy Docker loads holds only what Python read: the hidden manifest naming the base image is a plain
    file there. First, with a harmless tag, that Docker alone would apply the hidden manifest."""
    tar, image_id = saved
    client = docker.from_env()
    probe = "adversarial-sandbox-submission/hidden-probe:1"
    control = _rewritten(tar, tmp_path / "control.tar", [], hidden_tags=[probe])
    with tarfile.open(control) as seen:
        assert "blobs/decoy" in seen.getnames()
    with control.open("rb") as f:
        client.images.load(f)
    assert client.images.get(probe).id == image_id
    client.images.remove(probe)

    base_id = client.images.get(BASE).id
    crafted = _rewritten(tar, tmp_path / "hidden.tar", ["adversarial-sandbox-submission/hidden:1"], hidden_tags=[BASE])
    submission = load_submission(crafted, tmp_path / "unpacked")
    assert client.images.get(BASE).id == base_id
    assert submission.metadata.container == image_name("hidden", image_id.removeprefix("sha256:")[:12])


def test_package_image_of_an_id_with_a_space_and_a_dollar_keeps_the_id_in_its_label(tmp_path, docker_ready):
    """The labels once went into the Dockerfile's LABEL line, where `my attack$x` broke the build."""
    from sandbox.submission_image import ID_LABEL

    folder = write_submission(tmp_path / "src", "my attack$x", "attack", NOOP_ATTACK)
    result = package_submission(folder, tmp_path / "my attack$x.zip", image=True)
    client = docker.from_env()
    image = client.images.get(result.image)
    try:
        assert image.labels[ID_LABEL] == "my attack$x"
    finally:
        client.images.remove(image.id, force=True)
