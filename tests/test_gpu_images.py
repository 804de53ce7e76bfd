"""The GPU runtime images without a GPU and without their gigabytes of wheels: the Dockerfile targets and the
slices they are built from, their content hashes, the pins, the `pip download` command, which targets
`sandbox images build` picks with and without `--gpu`, and one real build of the torch-gpu stages with a small
stand-in wheel (the classic builder, offline).
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import docker
import pytest
from click.testing import CliRunner
from packaging.requirements import Requirement

from sandbox.bundled import dockerfile_dir
from sandbox.cli import main
from sandbox.errors import ImageBuildError
from sandbox.image_names import image_tag
from sandbox.images import (
    CPU_TARGETS,
    GPU_TARGETS,
    HASH_LABEL,
    TARGETS,
    WHEEL_PLATFORMS,
    WheelSource,
    _content_hash,
    _write_context,
    build_targets,
    cache_root,
    dockerfile_for,
    local_base_id,
    pip_download_command,
    wheel_targets,
)

DOCKERFILE = (dockerfile_dir() / "Dockerfile").read_text()
GPU_SECTION = "# GPU images"


def _pins(target: str) -> dict[str, Requirement]:
    lines = (dockerfile_dir() / "requirements" / f"{target}.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {req.name: req for req in reqs}


def test_gpu_targets_follow_the_cpu_ones_from_the_same_base_without_a_cuda_image():
    assert TARGETS == ("base", "torch-cpu", "tensorflow-cpu", "torch-gpu", "tensorflow-gpu")
    assert GPU_TARGETS == ("torch-gpu", "tensorflow-gpu") and CPU_TARGETS == TARGETS[:3]
    assert DOCKERFILE.index(GPU_SECTION) > DOCKERFILE.index("FROM base AS tensorflow-cpu\n")
    gpu_froms = [line for line in DOCKERFILE.split(GPU_SECTION)[1].splitlines() if line.startswith("FROM ")]
    assert gpu_froms and all(line.startswith("FROM base AS ") for line in gpu_froms)  # no CUDA base image
    for target in GPU_TARGETS:
        sliced = dockerfile_for(target)
        assert f"FROM base AS {target}-build\n" in sliced and f"FROM base AS {target}\n" in sliced
        assert f"COPY --from={target}-build /opt/venv /opt/venv" in sliced
        assert f"org.adversarial-sandbox.target={target} " in sliced
        assert "ENV NVIDIA_DRIVER_CAPABILITIES=compute,utility" in sliced
        assert "-cpu" not in sliced  # no CPU stage runs (nor needs its wheels) when a GPU image is built
        assert wheel_targets(target) == [target]
        assert image_tag(target) == f"adversarial-sandbox/{target}:0.1"


def test_cpu_slices_and_hashes_do_not_depend_on_the_gpu_targets(tmp_path):
    # The Dockerfile as it was before the GPU targets: the CPU images are built from the same text.
    without_gpu = DOCKERFILE[: DOCKERFILE.index(GPU_SECTION)].rstrip("\n") + "\n"
    for target in CPU_TARGETS:
        assert dockerfile_for(target) == dockerfile_for(target, without_gpu), target
        assert GPU_SECTION not in dockerfile_for(target)
    # Nor on each other: torch-cpu's slice holds no TensorFlow stage, and another target's wheels leave its
    # content hash alone while its own change it.
    assert "tensorflow" not in dockerfile_for("torch-cpu")
    context = tmp_path / "build"
    for target in TARGETS[1:]:
        (context / "wheels" / target).mkdir(parents=True)
    before = _content_hash("torch-cpu", context, "sha256:base")
    for other in ("tensorflow-cpu", "torch-gpu", "tensorflow-gpu"):
        (context / "wheels" / other / "x-1-py3-none-any.whl").write_bytes(b"other")
    assert _content_hash("torch-cpu", context, "sha256:base") == before
    (context / "wheels" / "torch-cpu" / "x-1-py3-none-any.whl").write_bytes(b"own")
    assert _content_hash("torch-cpu", context, "sha256:base") != before


def test_gpu_pins_match_the_cpu_ones_but_for_the_cuda_builds():
    torch_cpu, torch_gpu = _pins("torch-cpu"), _pins("torch-gpu")
    # `===` (arbitrary equality): the exact release, never a local 2.13.0+cpu wheel that `==` would prefer.
    assert torch_gpu["torch"].specifier.contains("2.13.0") and not torch_gpu["torch"].specifier.contains("2.13.0+cpu")
    assert set(torch_gpu) == set(torch_cpu), "the same samples run in both images: pin the same packages"
    for name, req in torch_cpu.items():
        (pin,) = req.specifier
        expected = f"==={pin.version}" if name in ("torch", "torchvision") else str(req.specifier)
        assert str(torch_gpu[name].specifier) == expected, name

    tf_cpu, tf_gpu = _pins("tensorflow-cpu"), _pins("tensorflow-gpu")
    assert tf_gpu["tensorflow"].extras == {"and-cuda"}
    assert str(tf_gpu["tensorflow"].specifier) == str(tf_cpu["tensorflow-cpu"].specifier) == "==2.21.0"
    assert {n: r.specifier for n, r in tf_gpu.items() if n != "tensorflow"} == {
        n: r.specifier for n, r in tf_cpu.items() if n != "tensorflow-cpu"
    }


def test_pip_downloads_gpu_wheels_for_the_image_with_every_platform_tag_cuda_wheels_use(tmp_path):
    source = WheelSource("https://index.example/simple", ("https://extra.example/simple",), ("/srv/wheels",))
    command = pip_download_command("torch-gpu", tmp_path / "wheels" / "torch-gpu", source)
    assert command[1:4] == ["-m", "pip", "download"] and "--only-binary=:all:" in command
    pairs = dict(zip(command, command[1:], strict=False))
    assert pairs["--python-version"] == "3.11" and pairs["--abi"] == "cp311" and pairs["--implementation"] == "cp"
    assert pairs["-r"] == str(dockerfile_dir() / "requirements" / "torch-gpu.txt")
    assert pairs["-d"] == str(tmp_path / "wheels" / "torch-gpu")
    assert pairs["--index-url"] == "https://index.example/simple"
    assert pairs["--extra-index-url"] == "https://extra.example/simple" and pairs["--find-links"] == "/srv/wheels"
    platforms = [value for flag, value in zip(command, command[1:], strict=False) if flag == "--platform"]
    assert platforms == list(WHEEL_PLATFORMS)
    # nvidia-cuda-cupti (2_25), nvidia-nccl (2_18), nvidia-nvjitlink and -nvrtc (2_12, manylinux2010): without
    # these tags pip finds no wheel for them.
    for tag in ("manylinux_2_25", "manylinux_2_24", "manylinux_2_18", "manylinux_2_12", "manylinux2010"):
        assert f"{tag}_x86_64" in platforms, tag
    plain = pip_download_command("tensorflow-gpu", tmp_path, WheelSource())
    assert not {"--index-url", "--extra-index-url", "--find-links"} & set(plain)  # pip's own configuration


def test_build_picks_the_gpu_targets_only_when_asked():
    assert build_targets() == CPU_TARGETS
    assert build_targets(gpu=True) == TARGETS
    assert build_targets(("torch-gpu",)) == ("torch-gpu",)
    assert build_targets(("torch-cpu",), gpu=True) == ("torch-cpu", *GPU_TARGETS)
    with pytest.raises(ImageBuildError, match="image target cuda: unknown; choose from base, torch-cpu"):
        build_targets(("cuda",))
    target_option = next(p for p in main.commands["images"].commands["build"].params if p.name == "targets")
    assert tuple(target_option.type.choices) == TARGETS


def test_a_gpu_context_sends_only_its_own_wheels(tmp_path):
    _write_context(tmp_path, "torch-gpu")
    assert (tmp_path / "Dockerfile").read_text() == dockerfile_for("torch-gpu")
    ignored = (tmp_path / ".dockerignore").read_text().splitlines()
    assert sorted(ignored) == sorted(["**/.complete", *(f"wheels/{t}" for t in TARGETS if t != "torch-gpu")])
    assert (tmp_path / "requirements" / "torch-gpu.txt").is_file()


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_images_build_without_gpu_leaves_the_gpu_images_out():
    plain = CliRunner().invoke(main, ["images", "build", "--dry-run"])
    assert plain.exit_code == 0, plain.output
    tags = [line.split(": ", 1)[0] for line in plain.output.splitlines()]
    assert tags == [image_tag(t) for t in CPU_TARGETS]

    gpu = CliRunner().invoke(main, ["images", "build", "--dry-run", "--gpu"])
    assert gpu.exit_code == 0, gpu.output
    lines = dict(line.split(": ", 1) for line in gpu.output.splitlines())
    assert list(lines) == [image_tag(t) for t in TARGETS]
    client = docker.from_env()
    for target in GPU_TARGETS:
        try:
            client.images.get(image_tag(target))
        except docker.errors.ImageNotFound:
            assert lines[image_tag(target)] == "would build (missing)"


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_the_torch_gpu_stages_build_offline_with_the_classic_builder(tmp_path):
    # The real slice and build arguments `build_images` uses; only the pins are replaced by one small wheel,
    # since the CUDA wheels are gigabytes.
    client = docker.from_env()
    base = local_base_id(client)
    pillow = sorted((cache_root() / "build" / "wheels" / "torch-cpu").glob("pillow-*.whl"))
    if base is None or not pillow:
        pytest.skip("needs a local base image and the torch-cpu wheel cache (`sandbox images build`)")
    context = tmp_path / "build"
    (context / "wheels" / "torch-gpu").mkdir(parents=True)
    shutil.copy2(pillow[0], context / "wheels" / "torch-gpu" / pillow[0].name)
    _write_context(context, "torch-gpu")
    version = pillow[0].name.split("-")[1]
    (context / "requirements" / "torch-gpu.txt").write_text(f"pillow=={version}\n")
    marker = f"gpu-build-test-{uuid.uuid4().hex[:8]}"
    tag = f"adversarial-sandbox-test/torch-gpu:{marker}"
    try:
        for chunk in client.api.build(
            path=str(context),
            target="torch-gpu",
            tag=tag,
            rm=True,
            forcerm=True,
            decode=True,
            network_mode="none",
            buildargs={"BASE_IMAGE": base, "CONTENT_HASH": marker},
        ):
            assert "error" not in chunk, chunk["error"]
        image = client.images.get(tag)
        assert image.labels["org.adversarial-sandbox.target"] == "torch-gpu" and image.labels[HASH_LABEL] == marker
        assert "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in image.attrs["Config"]["Env"]
        out = client.containers.run(
            tag, ["python", "-c", "import PIL; print(PIL.__version__)"], remove=True, network_mode="none"
        )
        assert out.decode().strip() == version
    finally:
        for leftover in client.images.list(filters={"label": f"{HASH_LABEL}={marker}"}):
            try:
                client.images.remove(leftover.id, force=True)
            except docker.errors.NotFound:
                pass  # a parent already removed with its child


def test_the_resolved_gpu_wheels_are_recorded_in_the_docs():
    # docs/gpu.md states what the pins resolved to and the sizes they imply; keep it in step with the pins.
    text = (Path(__file__).resolve().parent.parent / "docs" / "gpu.md").read_text()
    for pins in ("torch===2.13.0", "tensorflow[and-cuda]==2.21.0"):
        assert pins in text
    assert "sandbox images build --gpu" in text
    for name in GPU_TARGETS:
        assert image_tag(name) in text


def test_every_shipped_gpu_image_name_is_one_the_dockerfile_builds_beside_its_cpu_twin():
    import json

    repo = Path(__file__).resolve().parent.parent
    named = 0
    for metadata in sorted(repo.glob("sample_*/*/metadata.json")):
        fields = json.loads(metadata.read_text())
        if not fields.get("container_gpu"):
            continue
        named += 1
        gpu_target = {image_tag(t): t for t in GPU_TARGETS}.get(fields["container_gpu"])
        assert gpu_target, f"{metadata}: container_gpu {fields['container_gpu']} is not a GPU image of ours"
        assert fields["container"] == image_tag(gpu_target.replace("-gpu", "-cpu")), metadata
    assert named, "no shipped sample names a container_gpu"


def test_a_cpu_torch_image_given_torchs_cuda_build_says_how_to_get_the_cpu_one(tmp_path):
    """PyPI serves torch's CUDA build only: a torch-cpu image built from it works, with 2.8 GB of NVIDIA wheels."""
    from sandbox.images import TORCH_CPU_INDEX, cuda_torch_note

    (tmp_path / "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl").touch()
    assert cuda_torch_note("torch-cpu", tmp_path) is None  # torch alone: the CPU build, or unknown
    (tmp_path / "nvidia_cublas_cu12-12.8.4.1-py3-none-manylinux_2_27_x86_64.whl").touch()
    note = cuda_torch_note("torch-cpu", tmp_path)
    assert note and "CUDA build" in note and f"PIP_EXTRA_INDEX_URL={TORCH_CPU_INDEX}" in note
    assert cuda_torch_note("torch-gpu", tmp_path) is None  # there the CUDA build is the point
