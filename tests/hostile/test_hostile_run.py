"""Hostile submissions in one real run: each is a real submission folder, each rule is asserted on what the run
recorded, and the honest submissions' scores must equal those of a run without any hostile one.

Attacks write their images only when their attack on the sandbox failed (or write hostile outputs on purpose);
defenses write hostile `result.csv` files. Every kind names the rule it checks.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import docker
import pytest

from sandbox import Limits, RunOptions, run_competition
from sandbox.runtime.base import LABEL_RUN
from tests.submissions import BASE, FIXED_LABEL_DEFENSE, NOOP_ATTACK, TORCH, write_submission

pytestmark = pytest.mark.usefixtures("docker_ready")

COPY_IMAGES = 'for p in pathlib.Path(sys.argv[1]).glob("*.png"):\n    shutil.copy(p, sys.argv[2])\n'
PY = "#!/usr/bin/env python3\nimport os, pathlib, shutil, struct, subprocess, sys, time, zlib\n"

# name -> (entry point script, image). Attack rules are asserted in test_hostile_attacks_are_contained.
ATTACKS = {
    # Ignores SIGTERM and leaves children behind: killed at the limit, every process with it.
    "ignores_sigterm": ("#!/bin/sh\ntrap '' TERM\nsleep 1000 &\nsleep 1000 &\nsleep 1000\n", BASE),
    # A child in its own session that outlives the entry point: it dies with the container, writes nothing.
    "daemonises": (
        PY + "if os.fork() == 0:\n    os.setsid()\n    time.sleep(4)\n"
        "    pathlib.Path(sys.argv[2], 'late.png').write_bytes(b'x')\n    os._exit(0)\n" + COPY_IMAGES,
        BASE,
    ),
    # Floods stdout and stderr (100 MB): the log kept is capped, the run goes on, its images count.
    "floods_logs": (
        "#!/bin/sh\nhead -c 50000000 /dev/zero | tr '\\0' 'x' \nhead -c 50000000 /dev/zero | tr '\\0' 'y' >&2\n"
        'cp "$1"/*.png "$2"/\n',
        BASE,
    ),
    # Probes the Docker socket, /proc and /sys for the host: every probe must fail for its images to appear.
    "probes_host": (
        PY + "leaks = []\n"
        "for path in ['/var/run/docker.sock', '/run/docker.sock', '/proc/1/root/etc/shadow', '/etc/shadow']:\n"
        "    if os.path.exists(path) and os.access(path, os.R_OK) and path.endswith('shadow'):\n"
        "        leaks.append(path)\n"
        "    if 'docker.sock' in path and os.path.exists(path):\n        leaks.append(path)\n"
        "for path in ['/proc/sysrq-trigger', '/sys/fs/cgroup/pids.max', '/proc/sys/kernel/core_pattern']:\n"
        "    try:\n        open(path, 'w').write('1')\n        leaks.append(path)\n    except OSError:\n        pass\n"
        "try:\n    os.mknod('/tmp/dev', 0o600 | 0o020000, os.makedev(1, 3))\n    leaks.append('mknod')\n"
        "except OSError:\n    pass\n"
        "env = ' '.join(os.environ)\n"
        "if any(word in env for word in ('TOKEN', 'SECRET', 'PASSWORD', 'AWS_', 'DOCKER_HOST')):\n"
        "    leaks.append('environment')\n"
        "if leaks:\n    print('LEAK', leaks, file=sys.stderr)\n    sys.exit(0)\n" + COPY_IMAGES,
        BASE,
    ),
    # Output entries that are not plain files, each under an image's name: all skipped, never followed.
    "hardlinks": (
        PY + "names = sorted(p.name for p in pathlib.Path(sys.argv[1]).glob('*.png'))\n"
        "shutil.copy(pathlib.Path(sys.argv[1], names[0]), pathlib.Path(sys.argv[2], names[0]))\n"
        "for name in names[1:]:\n    os.link(pathlib.Path(sys.argv[2], names[0]), pathlib.Path(sys.argv[2], name))\n",
        BASE,
    ),
    "fifos": ('#!/bin/sh\nfor f in "$1"/*.png; do mkfifo "$2/$(basename "$f")"; done\n', BASE),
    "folders_named_like_images": ('#!/bin/sh\nfor f in "$1"/*.png; do mkdir "$2/$(basename "$f")"; done\n', BASE),
    # 200,000 extra files beside the real images: the run reads what it needs, bounded.
    "many_files": (
        PY + COPY_IMAGES + "for i in range(200_000):\n    open(os.path.join(sys.argv[2], f'junk{i}'), 'w').close()\n",
        BASE,
    ),
    # A PNG whose header claims 100000x100000 pixels, under every image's name: refused before decoding.
    "huge_header_png": (
        PY + "def chunk(kind, data):\n"
        "    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))\n"
        "png = b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', 100000, 100000, 8, 0, 0, 0, 0))"
        " + chunk(b'IDAT', zlib.compress(b'\\0' * 1000)) + chunk(b'IEND', b'')\n"
        "for p in pathlib.Path(sys.argv[1]).glob('*.png'):\n    pathlib.Path(sys.argv[2], p.name).write_bytes(png)\n",
        BASE,
    ),
    # A zTXt chunk that inflates to 200 MB in front of the real pixels: refused without inflating it.
    "ztxt_bomb": (
        PY + "def chunk(kind, data):\n"
        "    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))\n"
        "bomb = chunk(b'zTXt', b'k\\0\\0' + zlib.compress(b'\\0' * 200_000_000, 9))\n"
        "for p in pathlib.Path(sys.argv[1]).glob('*.png'):\n"
        "    data = p.read_bytes()\n"
        "    pathlib.Path(sys.argv[2], p.name).write_bytes(data[:33] + bomb + data[33:])\n",
        BASE,
    ),
    # 16-bit and palette PNGs of the clean pixels: decoded to the data set's mode, nothing failed.
    "png_16_bit": (
        "#!/usr/bin/env python3\nimport sys, pathlib\nimport numpy as np\nfrom PIL import Image\n"
        "for p in pathlib.Path(sys.argv[1]).glob('*.png'):\n"
        "    x = np.asarray(Image.open(p)).astype(np.uint16) * 257\n"
        "    Image.fromarray(x, mode='I;16').save(pathlib.Path(sys.argv[2], p.name))\n",
        TORCH,
    ),
    "png_palette": (
        "#!/usr/bin/env python3\nimport sys, pathlib\nfrom PIL import Image\n"
        "for p in pathlib.Path(sys.argv[1]).glob('*.png'):\n"
        "    grey = Image.open(p)\n"
        "    palette = Image.frombytes('P', grey.size, grey.tobytes())\n"
        "    palette.putpalette([v for i in range(256) for v in (i, i, i)])\n"
        "    palette.save(pathlib.Path(sys.argv[2], p.name))\n",
        TORCH,
    ),
}

# Defense rules: asserted in test_hostile_defenses_are_contained.
DEFENSES = {
    # 1 GB of result.csv: the output cap stops it, the run goes on, every label counts as missing.
    "result_1gb": ('#!/bin/sh\nhead -c 1000000000 /dev/zero > "$2"\nexit 0\n', BASE),
    # A BOM, CRLF line ends, NUL bytes on other lines: the valid lines count.
    "bom_crlf_nul": (
        "#!/usr/bin/env python3\nimport sys, pathlib\n"
        "names = sorted(p.name for p in pathlib.Path(sys.argv[1]).glob('*.png'))\n"
        "out = b'\\xef\\xbb\\xbf' + b''.join(f'{n},3\\r\\n'.encode() for n in names) + b'\\0\\0,\\0\\r\\n'\n"
        "pathlib.Path(sys.argv[2]).write_bytes(out)\n",
        BASE,
    ),
    # -1, 1e9, nan, a 20-digit label, 3.0, ' 3 ', names of no input, duplicates (the first parsed line wins).
    "weird_labels": (
        "#!/usr/bin/env python3\nimport sys, pathlib\n"
        "names = sorted(p.name for p in pathlib.Path(sys.argv[1]).glob('*.png'))\n"
        "bad = ['-1', '1e9', 'nan', '99999999999999999999', '3.0']\n"
        "lines = ['other_team_image.png,3', '../' + names[0] + ',3']\n"
        "for i, n in enumerate(names):\n"
        "    lines.append(f'{n}, 3 ' if i % 2 == 0 else f'{n},{bad[i % len(bad)]}')\n"
        "    lines.append(f'{n},3')  # a duplicate: the first line for a name wins\n"
        "pathlib.Path(sys.argv[2]).write_text('\\n'.join(lines) + '\\n')\n",
        BASE,
    ),
}

# Names a submission controls: folder names and entry points with spaces, quotes, markup, non-ASCII and shell
# metacharacters. They run like any other and reach the report escaped.
ODD_NAME = 'o\'k "x" <script>alert(1)<\\script> é $(touch pwned);'  # a folder name: no slash
ODD_ENTRY = "run me; $(id) `x`.sh"


def _honest(root: Path) -> None:
    write_submission(root / "attacks", "noop", "attack", NOOP_ATTACK)
    write_submission(root / "defenses", "always3", "defense", FIXED_LABEL_DEFENSE)


def _run(root: Path, dataset: Path, out: Path):
    for folder in ("attacks", "targeted", "defenses"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    options = RunOptions(
        attacks=(root / "attacks",),
        targeted_attacks=(root / "targeted",),
        defenses=(root / "defenses",),
        dataset=dataset,
        out=out,
        jobs=2,
        limits=Limits(time_per_100_images=200.0, min_time=20.0, memory="512m", cpus=1.0, output_size="64m"),
        build_images=False,
    )
    return run_competition(options)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One run with only the honest submissions, one with every hostile kind beside them."""
    from tests.conftest import make_small_dataset

    tmp = tmp_path_factory.mktemp("hostile")
    dataset = make_small_dataset(tmp / "data", 10)
    canary = tmp / "canary.txt"
    canary.write_text("untouched")
    honest_root, hostile_root = tmp / "honest", tmp / "hostile"
    _honest(honest_root)
    _honest(hostile_root)
    for name, (script, image) in ATTACKS.items():
        write_submission(hostile_root / "attacks", name, "attack", script, image=image)
    for name, (script, image) in DEFENSES.items():
        write_submission(hostile_root / "defenses", name, "defense", script, image=image)
    write_submission(hostile_root / "attacks", ODD_NAME, "attack", NOOP_ATTACK, entry=ODD_ENTRY)
    (hostile_root / "attacks" / "deep_metadata").mkdir()
    (hostile_root / "attacks" / "deep_metadata" / "metadata.json").write_text("[" * 100_000 + "]" * 100_000)
    (hostile_root / "attacks" / "huge_metadata").mkdir()
    (hostile_root / "attacks" / "huge_metadata" / "metadata.json").write_text(
        json.dumps({"type": "attack", "container": BASE, "entry_point": "run.sh", "description": "x" * 3_000_000})
    )
    # Half a UTF-16 pair: valid JSON, but no character, so no file (report.html) could hold the name.
    (hostile_root / "attacks" / "surrogate_name").mkdir()
    (hostile_root / "attacks" / "surrogate_name" / "metadata.json").write_text(
        json.dumps({"type": "attack", "container": BASE, "entry_point": "run.sh", "name": "x\ud800"})
    )
    honest = _run(honest_root, dataset, tmp / "honest_run")
    hostile = _run(hostile_root, dataset, tmp / "hostile_run")
    return honest, hostile, canary


def test_honest_scores_are_the_same_with_hostile_submissions_beside_them(runs):
    honest, hostile, canary = runs
    cell = honest.results["matrices"]["correct_on_attacks"]["noop"]["always3"]
    assert hostile.results["matrices"]["correct_on_attacks"]["noop"]["always3"] == cell
    assert canary.read_text() == "untouched"


def test_hostile_attacks_are_contained(runs):
    _, hostile, _ = runs
    f = hostile.results["failures"]
    assert f["ignores_sigterm"]["timeouts"] == 1
    assert f["daemonises"]["failed_images"] == 0 and f["daemonises"]["skipped_output_files"] == 0
    assert f["floods_logs"]["failed_images"] == 0 and len(f["floods_logs"]["log_tail"]) <= 70_000
    assert f["probes_host"]["failed_images"] == 0, f["probes_host"]["log_tail"]
    assert f["hardlinks"]["failed_images"] == 9 and f["hardlinks"]["skipped_output_files"] == 9
    for name in ("fifos", "folders_named_like_images", "huge_header_png", "ztxt_bomb"):
        assert f[name]["failed_images"] == 10 and f[name]["pieces_failed"] == 0, name
    assert f["many_files"]["failed_images"] == 0 and f["many_files"]["pieces_failed"] == 0
    assert f["png_16_bit"]["failed_images"] == 0 and f["png_palette"]["failed_images"] == 0
    # 16-bit and palette encodings of the clean pixels decode to exactly the clean pixels: noop's row.
    rows = hostile.results["matrices"]["correct_on_attacks"]
    assert rows["png_16_bit"] == rows["png_palette"] == rows["noop"]


def test_hostile_defenses_are_contained(runs):
    _, hostile, _ = runs
    f = hostile.results["failures"]
    n_distinct = f["result_1gb"]["failed_images"]
    assert n_distinct > 0 and f["result_1gb"]["pieces_failed"] == 0
    assert f["bom_crlf_nul"]["failed_images"] == 0 and f["bom_crlf_nul"]["bad_result_lines"] >= 1
    assert f["weird_labels"]["bad_result_lines"] > 0
    # '-1' parses and comes first: it is out of range, so that image counts as wrong although a '3' line follows.
    assert f["weird_labels"]["failed_images"] >= 1
    matrices = hostile.results["matrices"]["correct_on_attacks"]
    assert matrices["noop"]["weird_labels"] <= matrices["noop"]["always3"]
    assert matrices["noop"]["bom_crlf_nul"] == matrices["noop"]["always3"]


def test_odd_names_run_and_reach_the_report_escaped(runs):
    _, hostile, _ = runs
    assert hostile.results["failures"][ODD_NAME]["failed_images"] == 0
    html = (hostile.out / "report.html").read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)&lt;\\script&gt;" in html
    assert not list(hostile.out.rglob("pwned"))


def test_unreadable_metadata_is_left_out_in_one_line(runs):
    _, hostile, _ = runs
    reasons = {lo.id: lo.error for lo in hostile.left_out}
    assert "nested too deeply" in reasons["deep_metadata"] and "\n" not in reasons["deep_metadata"]
    assert "keep metadata.json short" in reasons["huge_metadata"]
    assert "lone surrogate" in reasons["surrogate_name"]


def test_nothing_is_left_running_and_nothing_in_the_run_folder_is_writable_by_submissions(runs):
    _, hostile, _ = runs
    run_id = json.loads((hostile.out / "manifest.json").read_text())["run_id"]
    client = docker.from_env()
    assert client.containers.list(all=True, filters={"label": f"{LABEL_RUN}={run_id}"}) == []
    assert client.volumes.list(filters={"label": f"{LABEL_RUN}={run_id}"}) == []
    for path in [hostile.out, *hostile.out.rglob("*")]:
        info = path.lstat()
        assert info.st_uid != 65534, path
        assert not (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_IWOTH), path
        assert not (stat.S_ISREG(info.st_mode) and info.st_mode & stat.S_IWOTH), path
