"""report.html as an organizer sees it in a browser: a hand-built run (no Docker) with hostile names, two epsilons, a
failing defense and a rejected submission, rendered by headless Chromium; every number below is worked out by hand.

The run: data set i0..i3 (2x2 grey, pixels 0, 10, 20, 30), epsilon 4 for i0 and i1, 8 for i2 and i3.
  noop     delivers the clean images.
  ODD      (an attack whose id is markup) adds +4 to i1, +8 to i2, -8 to i3, and to i0 [[4, 0], [2, 0]].
  tgt      (targeted) adds +1 everywhere.
  always_right labels every image with its true label; FLAKY (a defense whose id is a script tag):
    noop: i0 0 right, i1 1 right, i2 0 wrong, i3 2 wrong          correct 2
    ODD:  i0 1 wrong, i1 invalid, i2 2 right, i3 never labelled    correct 1
    tgt:  i0 1 (target) hit, i1 1 right, i2 0 (target) hit, i3 0 right   correct 2, hits 2
  FLAKY by epsilon: 4 -> noop i0, i1, tgt i1 right = 3 of 6; 8 -> ODD i2, tgt i3 right = 2 of 6.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from sandbox.dataset import load_dataset
from sandbox.outputs_read import encode_png, pixel_hash
from sandbox.reporting import build_results, write_report_html
from sandbox.scoring import compute_scores
from sandbox.store import AdversarialRecord, RunStore
from tests.browser import RECORDER_ID, Node, open_page, screenshot
from tests.stores import piece_record, write_dataset

ODD = "<b>odd</b> & \"quoted\" 'é' 名"
FLAKY = "flaky <script>alert(1)</script>"
TEAM = 'Team <i>"Ünï" & co</i>'
CLASS_NAMES = ["T-shirt/top", 'Café & "Bar"', "<b>Bag</b>"]
ROWS = [("i0", 0, 1), ("i1", 1, 2), ("i2", 2, 0), ("i3", 0, 2)]
EPSILON = {"i0": 4, "i1": 4, "i2": 8, "i3": 8}
DELTAS = {
    "noop": {i: 0 for i in EPSILON},
    ODD: {"i0": np.array([[4, 0], [2, 0]]), "i1": 4, "i2": 8, "i3": -8},
    "tgt": {i: 1 for i in EPSILON},
}
FLAKY_LABELS = {
    "noop": {"i0": 0, "i1": 1, "i2": 0, "i3": 2},
    ODD: {"i0": 1, "i1": None, "i2": 2},
    "tgt": {"i0": 1, "i1": 1, "i2": 0, "i3": 0},
}
LOG = "Traceback: <img src=x onerror=alert(1)> & 'ÜñÍçødé' \"done\""
LEFT_OUT = {
    "id": 'broken <zip> & "co"',
    "path": "/subs/broken <zip>.zip",
    "error": "metadata.json: <entry_point> missing",
}
SHA = "ab" * 32
ADDED = "2026-11-20T10:00:00+00:00"


def _entry(sub_id: str, **extra: object) -> dict:
    return {
        "id": sub_id,
        "name": sub_id,
        "path": f"/subs/{sub_id}",
        "container": "adversarial-sandbox/base:0.1",
        "entry_point": "run.sh",
        "source_model": None,
        "metadata_sha256": "cd" * 32,
        "warnings": [],
        **extra,
    }


def _manifest() -> dict:
    return {
        "run_id": "hand-<run>",
        "settings": {
            "epsilon": [4, 8],
            "isolation": "docker/runc",
            "limits": {
                "time_per_100_images": 500.0,
                "min_time": 60.0,
                "memory": "4g",
                "cpus": 1.0,
                "pids": 256,
                "output_size": "512m",
            },
        },
        "dataset": {"name": "hand & <made>", "images": 4, "size": [2, 2], "mode": "L", "num_classes": 3},
        "submissions": {
            "attack": [_entry("noop"), _entry(ODD, team=TEAM, name="Odd one ✓")],
            "targeted_attack": [_entry("tgt")],
            "defense": [
                _entry("always_right", team=TEAM, sha256=SHA, added=ADDED),
                _entry(FLAKY, team=None, added=None, warnings=["metadata.json: unknown field <foo> kept"]),
            ],
        },
        "left_out": [LEFT_OUT],
        "excluded": ["dropped <one>"],
    }


def _record_attacks(store: RunStore, clean: dict[str, np.ndarray]) -> dict[tuple[str, str], str]:
    """Each attack's images, stored as a real piece would: PNGs by pixel hash, then the piece and its records."""
    hashes = {}
    for attack, deltas in DELTAS.items():
        kind = "targeted_attack" if attack == "tgt" else "attack"
        records, pngs = [], {}
        for image_id, delta in deltas.items():
            pixels = (clean[image_id].astype(np.int16) + delta).astype(np.uint8)
            sha = hashes[attack, image_id] = pixel_hash(pixels)
            pngs[sha] = encode_png(pixels)
            records.append(AdversarialRecord(attack, image_id, sha, EPSILON[image_id], False, 0))
        store.save_adversarial_pngs(pngs)
        timing = {"started_at": 1000.0, "ended_at": 1002.0, "worker": "piece_0"}
        store.record_attack_piece(piece_record(f"{kind}/{attack}/0", kind, attack, 4, **timing), records)
    return hashes


def _record_defenses(store: RunStore, hashes: dict[tuple[str, str], str]) -> None:
    """always_right in one good piece; FLAKY in a good piece, a timed-out one with a hostile log, and a memory kill."""
    truth = {image_id: label for image_id, label, _ in ROWS}
    timing = {"started_at": 1003.0, "ended_at": 1004.0, "worker": "piece_0"}
    store.record_defense_piece(
        piece_record("defense/always_right/0", "defense", "always_right", len(hashes), **timing),
        {sha: truth[image_id] for (_, image_id), sha in hashes.items()},
    )
    good = {hashes[a, i]: label for a in ("noop", ODD) for i, label in FLAKY_LABELS[a].items()}
    store.record_defense_piece(piece_record(f"defense/{FLAKY}/0", "defense", FLAKY, len(good), **timing), good)
    timed_out = {hashes["tgt", i]: label for i, label in FLAKY_LABELS["tgt"].items()}
    failed = {"status": "failed", "stderr_tail": LOG, "exit_code": None, **timing}
    store.record_defense_piece(
        piece_record(f"defense/{FLAKY}/1", "defense", FLAKY, len(timed_out), timed_out=True, **failed), timed_out
    )
    store.record_defense_piece(
        piece_record(f"defense/{FLAKY}/2", "defense", FLAKY, 1, oom_killed=True, **{**failed, "exit_code": 137}), {}
    )


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[Path, dict]:
    """The hand-built run and its report.html, written by the same functions `sandbox report` calls."""
    root = tmp_path_factory.mktemp("report")
    data = write_dataset(root / "data", ROWS)
    (data / "dataset.json").write_text(json.dumps({"name": "hand", "num_classes": 3, "class_names": CLASS_NAMES}))
    dataset = load_dataset(data)
    store = RunStore(root / "run")
    try:
        hashes = _record_attacks(store, {r.image_id: dataset.load_pixels(r.image_id) for r in dataset.records})
        _record_defenses(store, hashes)
        manifest = _manifest()
        ids = {kind: [s["id"] for s in subs] for kind, subs in manifest["submissions"].items()}
        scores = compute_scores(store, dataset, ids["attack"], ids["targeted_attack"], ids["defense"])
        results = build_results(scores, store, manifest)
        write_report_html(root / "run", results, store, dataset)
    finally:
        store.close()
    return root / "run" / "report.html", results


@pytest.fixture(scope="module")
def page(report):
    return open_page(report[0], measure=(".delta",))


def _table_after(dom: Node, heading: str) -> Node:
    """The first table after the heading a person reads as `heading`."""
    nodes = list(dom.iter())
    start = next(i for i, n in enumerate(nodes) if n.tag in ("h2", "h3") and n.text() == heading)
    return next(n for n in nodes[start:] if n.tag == "table")


def _section(dom: Node, kind: str, sub_id: str) -> Node:
    """A submission's section, reached the way a reader gets there: its link in a leaderboard or heatmap."""
    links = [a for a in dom.find_all("a") if a.text() == sub_id and a.attrs["href"].startswith(f"#{kind}-")]
    assert links, f"no link to {sub_id!r}"
    return dom.find("section", id=links[0].attrs["href"][1:])


def test_the_page_loads_with_no_error_no_script_and_nothing_fetched(page, report):
    assert page.errors == [] and page.resources == []
    assert [s.attrs.get("id") for s in page.dom.find_all("script")] == [RECORDER_ID]  # the report has none itself
    for node in page.dom.iter():
        assert not [name for name in node.attrs if name.startswith("on")], node.tag
        for name in ("src", "href", "srcset", "action", "poster", "data"):
            assert node.attrs.get(name, "#").startswith(("#", "data:")), (node.tag, name, node.attrs[name])
    html = report[0].read_text()
    assert re.findall(r"url\(\s*(?!['\"]?data:)", html) == [] and "@import" not in html and "<link" not in html


def test_the_detector_sees_script_errors_failed_loads_and_fetches(tmp_path):
    """The check above proves nothing unless the recorder catches what it looks for."""
    broken = tmp_path / "broken.html"
    broken.write_text(
        '<!doctype html><html><head></head><body><img src="http://127.0.0.1:9/x.png">'
        "<script>notDefined()</script><script>console.error('boom')</script></body></html>"
    )
    shown = open_page(broken)
    assert any("notDefined is not defined" in e for e in shown.errors), shown.errors
    assert "error: boom" in shown.errors and any("x.png" in e for e in shown.errors)
    assert shown.resources == ["http://127.0.0.1:9/x.png"]


def test_hostile_names_show_as_text_never_as_markup(page):
    for text in (ODD, FLAKY, TEAM, LEFT_OUT["id"], LEFT_OUT["error"], LOG):
        assert any(n.text() == text for n in page.dom.iter()), text
    parsed = {("b", "odd"), ("i", '"Ünï" & co'), ("b", "Bag")}  # what the names would make if read as markup
    assert [n.tag for n in page.dom.iter() if (n.tag, n.text()) in parsed] == []
    assert [n.tag for n in page.dom.iter() if n.tag in ("img", "zip", "foo", "entry_point", "run", "made", "one")] == []
    assert page.dom.find("title").text() == "adversarial-sandbox report: hand-<run>"


def test_leaderboards_link_every_submission_to_its_section(page):
    rows = page.dom.find("table", id="ranking-defense").rows()
    assert rows == [
        ["#", "DefenseName", "Score", "Normalised"],
        ["1", f"always_right team {TEAM}", "12", "1.000"],
        ["2", f"{FLAKY} 1 timeout, 1 memory kill", "5", "0.417"],
    ]
    assert page.dom.find("table", id="ranking-attack").rows()[1:] == [
        ["1", f"{ODD} Odd one ✓ team {TEAM}", "3", "0.375"],
        ["2", "noop", "2", "0.250"],
    ]
    assert page.dom.find("table", id="ranking-targeted_attack").rows()[1:] == [["1", "tgt", "2", "0.250"]]
    for kind, sub_id in [("defense", "always_right"), ("defense", FLAKY), ("attack", ODD), ("targeted_attack", "tgt")]:
        assert _section(page.dom, kind, sub_id).find("h4").text().startswith(sub_id)


def test_heatmaps_hold_the_matrices(page):
    header = ["", "always_right", FLAKY]
    assert _table_after(page.dom, "Correctly classified images: attacks x defenses").rows() == [
        header,
        [ODD, "4", "1"],
        ["noop", "4", "2"],
    ]
    assert _table_after(page.dom, "Correctly classified images: targeted attacks x defenses").rows() == [
        header,
        ["tgt", "4", "2"],
    ]
    hits = _table_after(page.dom, "Target class hits: targeted attacks x defenses")
    assert hits.rows() == [header, ["tgt", "0", "2"]]
    assert len(hits.find_all("td", cls="cell")) == 2


def test_accuracy_against_epsilon(page, report):
    assert report[1]["accuracy_by_epsilon"] == {
        "epsilons": [4, 8],
        "images": [6, 6],
        "correct": {"always_right": [6, 6], FLAKY: [3, 2]},
    }
    assert page.dom.find("table", id="epsilon-table").rows() == [
        ["defense", "epsilon 4 6 images", "epsilon 8 6 images"],
        ["always_right", "100.0%", "100.0%"],
        [FLAKY, "50.0%", "33.3%"],
    ]
    lines = page.dom.find("svg", role="img").find_all("polyline")
    assert [line.text() for line in lines] == ["always_right", FLAKY]


def test_the_gallery_shows_perturbations_and_each_defense_label(page):
    table = page.dom.find("table", cls="gallery")
    assert table.rows()[0] == ["image", ODD, "noop", "tgt targeted"]
    i0 = table.find_all("tr")[1]
    clean, odd, noop, tgt = (c for c in i0.children if isinstance(c, Node))
    assert clean.text() == 'i0 true: T-shirt/top (0) target: Café & "Bar" (1)'
    assert odd.find("span", cls="delta").attrs["style"] == "--gain: 63.75"
    assert "largest change 4, x63.8; epsilon 4" in odd.text()
    assert [(li.attrs["class"], li.text()) for li in odd.find_all("li")] == [
        ("right", "always_right: T-shirt/top (0)"),
        ("wrong", f'{FLAKY}: Café & "Bar" (1)'),
    ]
    assert [(li.attrs["class"], li.text()) for li in tgt.find_all("li")][1] == ("hit", f'{FLAKY}: Café & "Bar" (1)')
    assert "unchanged" in noop.text() and noop.find("span", cls="delta").attrs["style"] == "--gain: 1"
    i1, i3 = table.find_all("tr")[2], table.find_all("tr")[4]
    assert f"{FLAKY}: no valid label" in i1.text() and f"{FLAKY}: not classified yet" in i3.text()
    assert "<b>Bag</b>" in table.find_all("tr")[3].text()  # i2's true class name, shown as written


def test_the_magnified_perturbation_is_drawn_as_computed(page, report, tmp_path):
    """i0 under ODD changed by [[4, 0], [2, 0]]: magnified x63.75 that is white, black, mid grey (2 x 63.75)."""
    left, top, width, height = page.boxes[".delta"]
    shot = screenshot(report[0], tmp_path / "shot.png", height=int(top + height) + 20)
    quarter = (width / 4, height / 4)
    pixel = [
        shot.getpixel((int(left + x * quarter[0]), int(top + y * quarter[1]))) for x, y in ((1, 1), (3, 1), (1, 3))
    ]
    assert pixel[0] == (255, 255, 255) and pixel[1] == (0, 0, 0)
    assert all(abs(channel - 128) <= 1 for channel in pixel[2]), pixel


def test_each_submission_section_shows_limits_failures_log_time_and_provenance(page):
    flaky = _section(page.dom, "defense", FLAKY)
    assert flaky.find("span", cls="badge").text() == "limits hit: 1 timeout, 1 memory kill"
    facts = dict(
        zip([dt.text() for dt in flaky.find_all("dt")], [dd.text() for dd in flaky.find_all("dd")], strict=True)
    )
    assert facts["pieces"] == "3, 2 failed" and facts["isolation"] == "test"
    assert facts["failures"].startswith("0 failed images") and facts["last error"] == "exit code 137"
    assert facts["warnings"] == "metadata.json: unknown field <foo> kept"
    assert facts["time"].startswith("3.0 s in its containers for 12 images (1.5 s of the sandbox's own work)")
    assert "team" not in facts and "archive SHA-256" not in facts and "added" not in facts
    assert flaky.find("details").attrs.get("open") == "" and flaky.find("pre").text() == " ".join(LOG.split())
    right = _section(page.dom, "defense", "always_right")
    facts = dict(
        zip([dt.text() for dt in right.find_all("dt")], [dd.text() for dd in right.find_all("dd")], strict=True)
    )
    assert (facts["team"], facts["archive SHA-256"], facts["added"]) == (TEAM, SHA, ADDED)
    assert right.find("span", cls="badge").text() == "no limit hit"
    assert "start-up unknown (all its pieces had one size), per image 83.33 ms at most" in facts["time"]


def test_left_out_and_excluded_submissions_come_first_with_their_reason(page):
    box = page.dom.find("div", id="left-out")
    assert box.find("h2").text() == "Left out: 1 submission not scored"
    assert box.find("table").rows()[1] == [LEFT_OUT["id"], LEFT_OUT["error"], LEFT_OUT["path"]]
    order = [n.attrs.get("id") for n in page.dom.iter() if n.attrs.get("id") in ("left-out", "leaderboards")]
    assert order == ["left-out", "leaderboards"]
    assert page.dom.find("nav").find("a", href="#left-out").text() == "Left out (1)"
    excluded = page.dom.find("p", id="excluded").text()
    assert excluded == "Excluded by the organizers from this run and its scores: dropped <one>."
