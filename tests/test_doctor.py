"""`sandbox doctor` against the real daemon: a missing image, a missing gVisor runtime, a healthy machine.

The image list and the runtime name are parameters of the checks, so the tests ask for a tag or a runtime that
does not exist instead of deleting the real images or unregistering runsc.
"""

from __future__ import annotations

import uuid

import docker
import pytest
from click.testing import CliRunner

from sandbox.cli import main
from sandbox.doctor import check_image, run_checks
from sandbox.image_names import image_tag
from sandbox.images import local_base_id


def _by_name(checks) -> dict:
    return {check.name: check for check in checks}


def _lines(output: str) -> dict[str, str]:
    """The report's lines by check name: a 4-character status, then the name in a 20-character column."""
    statuses = ("ok", "warn", "FAIL", "info", "skip")
    return {line[5:25].strip(): line for line in output.splitlines() if line[:4].strip() in statuses}


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_a_missing_image_fails_with_the_build_command_as_its_fix():
    missing = f"adversarial-sandbox-doctor-test/missing:{uuid.uuid4().hex[:8]}"
    checks = _by_name(run_checks(images=[missing, image_tag("base")]))

    image = checks[f"image {missing}"]
    assert image.failed and image.detail == f"{missing} missing"
    assert "sandbox images build" in image.fix
    assert not checks["image base"].failed  # the real one next to it is still found
    assert [name for name, check in checks.items() if check.failed] == [f"image {missing}"]


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_a_missing_runtime_image_the_first_run_builds_is_a_warning_not_a_failure():
    """A fresh machine has none of the runtime images, and `sandbox run` builds them: `sandbox doctor && sandbox
    run` (the README's first command) must reach the run."""
    if local_base_id(docker.from_env()) is None:
        pytest.skip("no base image here: whether one can be made depends on Docker Hub and debootstrap")
    missing = image_tag(f"doctor-test-{uuid.uuid4().hex[:8]}")  # one of ours by its name, never built
    checks = _by_name(run_checks(images=[missing]))
    image = checks[f"image {missing}"]
    assert image.status == "warn" and "the first `sandbox run` builds it" in image.detail
    assert "sandbox images build" in image.fix
    assert not any(check.failed for check in checks.values())


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_an_image_whose_content_hash_does_not_match_is_a_warning_to_rebuild():
    client = docker.from_env()
    if local_base_id(client) is None:
        pytest.skip("no base image here to compute the content hash from")
    tag = f"adversarial-sandbox-doctor-test/stale:{uuid.uuid4().hex[:8]}"
    client.images.get(image_tag("torch-cpu")).tag(tag)  # torch-cpu's hash label, checked as if it were `base`
    try:
        stale = check_image(client, tag, "base")
    finally:
        client.images.remove(tag, noprune=True)
    assert stale.status == "warn" and "out of date" in stale.detail and "sandbox images build" in stale.fix
    assert not stale.failed  # a run still works with an old image


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_a_missing_gvisor_runtime_warns_and_fails_only_when_the_run_asks_for_gvisor():
    runtime = f"runsc-doctor-test-{uuid.uuid4().hex[:8]}"
    optional = _by_name(run_checks(images=[], gvisor_runtime=runtime))["gvisor"]
    assert optional.status == "warn" and not optional.failed
    assert f"no {runtime} runtime registered" in optional.detail and "install-docker.sh --gvisor" in optional.fix

    required = _by_name(run_checks(images=[], gvisor_runtime=runtime, isolation="gvisor"))["gvisor"]
    assert required.failed and required.fix == optional.fix


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_a_healthy_machine_passes_every_required_check_with_exit_0(tmp_path):
    result = CliRunner().invoke(main, ["doctor", "--out", str(tmp_path / "run")])
    lines = _lines(result.output)

    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith("ready for `sandbox run`")
    for name in ("docker", "limits", "disk", "dataset"):
        assert lines[name].startswith("ok"), lines[name]
    for target in ("base", "torch-cpu", "tensorflow-cpu"):
        assert lines[f"image {target}"].startswith(("ok", "warn")), lines[f"image {target}"]
    assert lines["gvisor"].startswith(("ok", "warn")) and lines["gpus"].startswith("info")
    assert "FAIL" not in result.output


def test_unreachable_docker_fails_with_its_fix_and_skips_what_needs_it(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    result = CliRunner().invoke(main, ["doctor", "--out", str(tmp_path)], env=env)
    lines = _lines(result.output)

    assert result.exit_code == 1
    assert lines["docker"].startswith("FAIL") and "not reachable" in lines["docker"]
    assert "fix: DOCKER_HOST is" in lines["docker"]
    assert lines["limits"].startswith("skip") and lines["gvisor"].startswith("skip")
    assert lines["dataset"].startswith("ok") and lines["disk"].startswith("ok")
    assert result.output.rstrip().endswith("not ready: fix docker")


def test_a_bad_data_set_and_too_little_disk_fail_with_their_fixes(tmp_path):
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}  # these checks do not need Docker
    args = ["doctor", "--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"), "--min-free", "1e9"]
    result = CliRunner().invoke(main, args, env=env)
    lines = _lines(result.output)

    assert result.exit_code == 1
    assert lines["dataset"].startswith("FAIL") and "no such data set folder" in lines["dataset"]
    assert "fix:" in lines["dataset"]
    assert lines["disk"].startswith("FAIL") and "under the 1e+09 GiB asked" in lines["disk"]
    assert "fix: free space there" in lines["disk"]


def _gpu_runtime_here() -> list[str]:
    from sandbox.runtime.docker import gpu_access

    return gpu_access(docker.from_env().info())


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
def test_without_a_gpu_runtime_the_doctor_says_so_with_where_to_get_the_toolkit():
    if _gpu_runtime_here():
        pytest.skip("this Docker can pass GPUs")
    optional = _by_name(run_checks(images=[]))["gpus"]
    assert optional.status == "info" and not optional.failed
    assert optional.detail.startswith("no GPU runtime:") and "--gpus cannot start a container" in optional.detail
    assert "NVIDIA Container Toolkit from NVIDIA's apt repository" in optional.fix
    assert "not in Debian's main archive" in optional.fix and "nvidia-ctk runtime configure" in optional.fix

    required = _by_name(run_checks(gpus="0,1"))
    assert required["gpus"].failed and required["gpus"].fix == optional.fix
    for target in ("torch-gpu", "tensorflow-gpu"):  # --gpus also counts the GPU images, with their own build
        image = required[f"image {target}"]
        assert image.name == f"image {target}" and ("--gpu" in image.fix or not image.failed)


def test_the_gpu_check_reads_each_way_docker_passes_gpus():
    import shutil

    from sandbox.doctor import check_gpus
    from sandbox.runtime.docker import NVIDIA_HOOK

    for info in (
        {"Runtimes": {"nvidia": {"path": "nvidia-container-runtime"}}},
        {"DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=all"}]},
    ):
        check = check_gpus(info, required=True)
        assert not check.failed and not check.detail.startswith("no GPU runtime"), check
    assert check_gpus({}, required=True).failed == (shutil.which(NVIDIA_HOOK) is None)


@pytest.mark.docker
@pytest.mark.usefixtures("docker_ready")
@pytest.mark.parametrize("gpus", ["0,1", "all"])
def test_a_run_with_gpus_and_no_gpu_runtime_stops_at_the_start_in_one_line(tmp_path, gpus):
    if _gpu_runtime_here():
        pytest.skip("this Docker can pass GPUs")
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--gpus", gpus, "--out", str(out)])

    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: --gpus {gpus}: Docker cannot pass GPUs into containers here: no GPU runtime (no nvidia runtime, no "
        "nvidia-container-runtime-hook, no NVIDIA CDI device); install the NVIDIA Container Toolkit from NVIDIA's "
        "apt repository (it is not in Debian's main archive), run `nvidia-ctk runtime configure --runtime=docker` "
        "and restart dockerd (docs/gpu.md); or run without --gpus"
    ]
    assert not out.exists()  # stopped before the run folder, so before any piece
