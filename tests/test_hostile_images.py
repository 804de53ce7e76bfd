"""Submissions whose own image is hostile: what an image's config declares must not widen the sandbox."""

from __future__ import annotations

import io
from collections.abc import Iterator

import docker
import pytest

from sandbox import Limits, run_competition
from tests.submissions import BASE, FIXED_LABEL_DEFENSE, write_submission
from tests.test_competition import folders, options

pytestmark = pytest.mark.usefixtures("docker_ready")

# Writes 64 MiB into the image's declared VOLUME, then its images only if that write was refused.
FILL_VOLUME = '#!/bin/sh\ndd if=/dev/zero of=/data/fill bs=1M count=64 2>/dev/null && exit 0\ncp "$1"/*.png "$2"/\n'


def anonymous_volumes(client) -> set[str]:
    """Volumes Docker made for an image's VOLUME (named by 64 hex digits), not the runs' own labelled ones."""
    return {v.name for v in client.volumes.list() if len(v.name) == 64 and not v.name.startswith("sbx-")}


def _built_image(tag: str, dockerfile: str) -> Iterator[str]:
    """A test image FROM the base image, tagged `tag` while the test runs."""
    client = docker.from_env()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile.encode()), rm=True, network_mode="none")
    image.tag(tag)
    yield tag
    client.images.remove(tag, force=True)


@pytest.fixture
def image_with_a_volume():
    # The volume is made writable for the submission's user, as a hostile image would.
    dockerfile = f"FROM {BASE}\nRUN mkdir /data && chown 65534:65534 /data\nVOLUME /data\n"
    yield from _built_image("adversarial-sandbox-test/volume:1", dockerfile)


def test_an_image_volume_gets_a_capped_tmpfs_not_the_hosts_disk(tmp_path, small_dataset, image_with_a_volume):
    client = docker.from_env()
    volumes_before = anonymous_volumes(client)
    attacks, _, defenses = folders(tmp_path)
    write_submission(attacks, "fill_volume", "attack", FILL_VOLUME, image=image_with_a_volume)
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    limits = Limits(time_per_100_images=150.0, memory="512m", cpus=1.0)
    result = run_competition(
        options(tmp_path, small_dataset, limits=limits.__class__(**{**limits.__dict__, "tmp_size": "8m"}))
    )

    assert result.results["failures"]["fill_volume"]["failed_images"] == 0, result.results["failures"]
    assert anonymous_volumes(client) == volumes_before, "an anonymous volume was left on the host"


@pytest.fixture
def image_with_a_volume_inside_code():
    yield from _built_image("adversarial-sandbox-test/volume-in-code:1", f"FROM {BASE}\nVOLUME /code/cache\n")


def test_an_image_whose_volume_no_container_can_mount_is_left_out_not_a_host_fault(
    tmp_path, small_dataset, image_with_a_volume_inside_code
):
    """Inside the read-only /code no mount point can be made, so every container of that image fails to start: as
    a host fault that would stop the run, and every resume. It is the image's fault, found at admission."""
    attacks, _, defenses = folders(tmp_path)
    write_submission(attacks, "volume_in_code", "attack", FILL_VOLUME, image=image_with_a_volume_inside_code)
    write_submission(attacks, "noop", "attack", '#!/bin/sh\ncp "$1"/*.png "$2"/\n')
    write_submission(defenses, "always3", "defense", FIXED_LABEL_DEFENSE)
    result = run_competition(options(tmp_path, small_dataset))

    (left_out,) = result.left_out
    assert left_out.id == "volume_in_code" and "declares VOLUME /code/cache" in left_out.error
    assert result.results["failures"]["noop"]["failed_images"] == 0  # the run went on without it
    assert result.results["scores"]["defense"]["always3"] > 0
