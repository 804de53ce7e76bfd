"""Fixtures: a real Docker daemon with the sandbox's images, small real data sets, real submissions.

Docker tests skip on a developer machine without Docker, but fail in CI (CI=true): a skipped container test
there would hide exactly what this project exists to do.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandbox.bundled import default_dataset_dir
from sandbox.dataset import subset_dataset
from sandbox.image_names import image_tag

IN_CI = os.environ.get("CI", "").lower() == "true"


def _docker_problem() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        client.ping()
    except Exception as exc:  # any failure to reach the daemon means the same thing here
        return f"Docker is not reachable: {exc}"
    # The shipped samples use all three; a missing one is built by `sandbox run`, but slowly, so ask for it here.
    for tag in (image_tag("base"), image_tag("torch-cpu"), image_tag("tensorflow-cpu")):
        try:
            client.images.get(tag)
        except Exception:
            return f"image {tag} missing: run `sandbox images build`"
    return None


@pytest.fixture(scope="session")
def docker_ready() -> None:
    problem = _docker_problem()
    if problem:
        if IN_CI:
            pytest.fail(f"CI=true and {problem}")
        pytest.skip(problem)


@pytest.fixture(scope="session")
def tensorflow_image(docker_ready) -> None:
    """The TensorFlow runtime image is large: CI builds it, a developer may not have."""
    import docker

    try:
        docker.from_env().images.get(image_tag("tensorflow-cpu"))
    except Exception:
        message = f"image {image_tag('tensorflow-cpu')} missing: run `sandbox images build`"
        if IN_CI:
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)


def make_small_dataset(dest: Path, n: int) -> Path:
    """The first `n` images of the shipped data set, as a data set folder of its own."""
    return subset_dataset(default_dataset_dir(), dest, n)


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return make_small_dataset(tmp_path / "data20", 20)
