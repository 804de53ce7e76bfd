"""`sandbox dataset fetch` against a local HTTP server: good images, and every way a download goes wrong.

No Docker, no internet: the server on 127.0.0.1 serves generated JPEGs, a 404, a stalled response, a trickling
body, a truncated body, an HTML page, an oversized body, a redirect loop and a flaky 503.
"""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from sandbox.cli import main
from sandbox.dataset import load_dataset
from sandbox.errors import DataSetError
from sandbox.fetch import FAILURES_FILE, FetchOptions, FetchProgress, download, fetch_dataset, read_source

REPO = Path(__file__).resolve().parent.parent
HEADER = [
    "ImageId",
    "URL",
    "x1",
    "y1",
    "x2",
    "y2",
    "TrueLabel",
    "TargetClass",
    "OriginalLandingURL",
    "License",
    "Author",
    "AuthorProfileURL",
]
FAST = FetchOptions(
    workers=8, retries=1, connect_timeout_s=1.0, read_timeout_s=1.0, deadline_s=1.5, backoff_s=0.01, max_bytes=200_000
)


def _jpeg(width: int = 400, height: int = 300, quality: int = 95) -> bytes:
    """Left half red, right half blue; 4:4:4 and an edge on an 8-pixel block boundary, so no colour bleeds."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (255, 0, 0)
    pixels[:, width // 2 :] = (0, 0, 255)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality, subsampling=0)
    return out.getvalue()


JPEG = _jpeg()


class Server(ThreadingHTTPServer):
    daemon_threads = True
    release = threading.Event()  # set at teardown: stalled handlers stop waiting

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.requests: Counter[str] = Counter()
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:  # the client hung up on a stalled handler: expected
        pass

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{path}"


class Handler(BaseHTTPRequestHandler):
    server: Server

    def log_message(self, format, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, content_type: str = "image/jpeg", length: int | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path
        with self.server.lock:
            self.server.requests[path] += 1
            count = self.server.requests[path]
        if path.startswith("/good/"):
            self._send(200, JPEG)
        elif path == "/grey.png":
            out = io.BytesIO()
            Image.new("L", (50, 80), 128).save(out, format="PNG")
            self._send(200, out.getvalue(), "image/png")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/good/redirected.jpg")
            self.end_headers()
        elif path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif path == "/stall":
            self.server.release.wait(10)
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            stop = time.monotonic() + 5  # without a deadline in the client this test fails, not hangs
            while not self.server.release.wait(0.1) and time.monotonic() < stop:
                self.wfile.write(b"x")
                self.wfile.flush()
        elif path == "/truncated":
            self._send(200, JPEG[: len(JPEG) // 2], length=len(JPEG))
        elif path == "/html":
            self._send(200, b"<!DOCTYPE html><html><body>Photo not found</body></html>", "text/html")
        elif path == "/big-unsized":  # no Content-Length: the size is only known while reading
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"\xff" * 300_000)
        elif path == "/cut.jpg":  # a truncated photo served as if whole: the decoder must notice
            self._send(200, JPEG[: len(JPEG) // 2])
        elif path == "/empty":
            self._send(200, b"")
        elif path == "/big":
            self._send(200, b"\xff" * 300_000)
        elif path == "/odd-length":  # a header is Latin-1: '²' passes str.isdigit() and fails int()
            self.send_response(200)
            self.send_header("Content-Length", "\u00b2")
            self.end_headers()
            self.wfile.write(JPEG)
        elif path == "/flaky":
            self._send(503, b"busy", "text/plain") if count == 1 else self._send(200, JPEG)
        else:
            self._send(404, b"not found", "text/plain")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    Server.release.clear()
    httpd = Server()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    Server.release.set()
    httpd.shutdown()
    httpd.server_close()


def write_source(path: Path, server: Server, rows: list[tuple[str, str, tuple[float, float, float, float]]]) -> Path:
    """A description CSV in the NIPS 2017 format: (ImageId, path on the server, box) per row."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(HEADER)
        for i, (image_id, url_path, box) in enumerate(rows):
            landing = f"https://example.org/{image_id}"
            writer.writerow(
                [image_id, server.url(url_path), *box, 100 + i, 900 - i, landing, "CC BY 2.0", "A. Author", landing]
            )
    return path


WHOLE = (0.0, 0.0, 1.0, 1.0)
RIGHT = (0.5, 0.0, 1.0, 1.0)
LEFT = (0.0, 0.25, 0.5, 0.75)
GOOD = [("right", "/good/1.jpg", RIGHT), ("left", "/good/2.jpg", LEFT), ("whole", "/good/3.jpg", WHOLE)]
BAD = {
    "missing": ("/missing.jpg", "HTTP 404"),
    "stalled": ("/stall", "read timeout"),
    "trickle": ("/trickle", "not complete after 1.5 s"),
    "truncated": ("/truncated", "truncated body"),
    "html": ("/html", "not an image (an HTML page)"),
    "big": ("/big", "over the limit of 200000"),
    "empty": ("/empty", "not an image (empty body)"),
    "unsized": ("/big-unsized", "body over the limit of 200000"),
    "cut": ("/cut.jpg", "not a readable image"),
    "loop": ("/loop", "redirects (a redirect loop?)"),
}


@pytest.fixture(scope="module")
def fetched(server: Server, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object, list[FetchProgress]]:
    """One fetch of every case, shared by the checks below (the stalled ones cost a few seconds)."""
    tmp = tmp_path_factory.mktemp("fetch")
    rows = [*GOOD, ("redirected", "/redirect", WHOLE), ("grey", "/grey.png", WHOLE)]
    rows += [(image_id, path, WHOLE) for image_id, (path, _) in BAD.items()]
    source = write_source(tmp / "dev_dataset.csv", server, rows)
    events: list[FetchProgress] = []
    started = time.monotonic()
    result = fetch_dataset(source, tmp / "out", FAST, progress=events.append)
    assert time.monotonic() - started < 8, "a stalled server must cost about the deadline, not hang"
    return tmp / "out", result, events


def test_good_images_are_cropped_resized_rgb_png(fetched) -> None:
    out, result, _ = fetched
    assert result.fetched == 5 and result.already_there == 0
    for image_id in ("right", "left", "whole", "redirected", "grey"):
        with Image.open(out / "images" / f"{image_id}.png") as image:
            assert (image.format, image.size, image.mode) == ("PNG", (299, 299), "RGB")
    right = np.asarray(Image.open(out / "images" / "right.png")).astype(int)
    assert (right[..., 2] > 230).all() and (right[..., 0] < 25).all(), "the right half of the photo is blue"
    left = np.asarray(Image.open(out / "images" / "left.png")).astype(int)
    assert (left[..., 0] > 230).all() and (left[..., 2] < 25).all(), "the left half of the photo is red"
    whole = np.asarray(Image.open(out / "images" / "whole.png")).astype(int)
    assert whole[150, 10, 0] > 230 and whole[150, 288, 2] > 230, "the whole photo: red, then blue"


def test_each_failure_is_listed_with_its_reason_and_left_out(fetched) -> None:
    out, result, _ = fetched
    with (out / FAILURES_FILE).open(newline="") as f:
        failures = {row["ImageId"]: row for row in csv.DictReader(f)}
    assert set(failures) == set(BAD)
    for image_id, (path, reason) in BAD.items():
        assert reason in failures[image_id]["reason"], (image_id, failures[image_id]["reason"])
        assert failures[image_id]["URL"].endswith(path)
        assert not (out / "images" / f"{image_id}.png").exists()
    assert "after 2 tries" in failures["stalled"]["reason"], "a timeout is transient: it was retried"
    assert "tries" not in failures["missing"]["reason"], "a 404 is not retried"
    assert {f.image_id for f in result.failures} == set(BAD)
    assert not list((out / "images").glob(".*")), "no temporary file is left behind"


def test_the_folder_is_a_valid_data_set(fetched) -> None:
    out, _, _ = fetched
    ds = load_dataset(out)
    assert [r.image_id for r in ds.records] == ["right", "left", "whole", "redirected", "grey"]
    assert (ds.size, ds.mode, ds.num_classes) == ((299, 299), "RGB", 1001)
    assert ds.by_id()["right"].true_label == 100 and ds.by_id()["right"].target_class == 900
    with (out / "dataset.csv").open(newline="") as f:
        assert csv.DictReader(f).fieldnames == HEADER, "the attribution columns travel with the images"
    info = json.loads((out / "dataset.json").read_text())
    assert info["label_offset"] == 1 and "0 = background" in info["labels"] and info["name"].startswith("NIPS 2017")


def test_progress_reports_every_image(fetched) -> None:
    _, _, events = fetched
    total = len(GOOD) + 2 + len(BAD)
    assert events[0] == FetchProgress(0, total)
    assert [e.done for e in events[1:]] == list(range(1, total + 1))
    assert {e.image_id for e in events if e.error} == set(BAD)


def test_a_rerun_fetches_only_the_missing_images(server: Server, tmp_path: Path) -> None:
    rows = [("a", "/good/rerun-a.jpg", WHOLE), ("b", "/good/rerun-b.jpg", RIGHT), ("gone", "/rerun-gone.jpg", WHOLE)]
    source = write_source(tmp_path / "src.csv", server, rows)
    first = fetch_dataset(source, tmp_path / "out", FAST)
    assert (first.fetched, first.already_there, len(first.failures)) == (2, 0, 1)
    (tmp_path / "out" / "images" / "b.png").unlink()
    second = fetch_dataset(source, tmp_path / "out", FAST)
    assert (second.fetched, second.already_there, len(second.failures)) == (1, 1, 1)
    counts = {path: server.requests[path] for path in ("/good/rerun-a.jpg", "/good/rerun-b.jpg", "/rerun-gone.jpg")}
    assert counts == {"/good/rerun-a.jpg": 1, "/good/rerun-b.jpg": 2, "/rerun-gone.jpg": 2}


def test_a_transient_error_is_retried(server: Server, tmp_path: Path) -> None:
    source = write_source(tmp_path / "src.csv", server, [("flaky", "/flaky", WHOLE)])
    result = fetch_dataset(source, tmp_path / "out", FAST)
    assert result.fetched == 1 and server.requests["/flaky"] == 2
    assert not (tmp_path / "out" / FAILURES_FILE).exists()


def test_limit_takes_the_first_rows(server: Server, tmp_path: Path) -> None:
    rows = [(f"lim{i}", f"/good/lim{i}.jpg", WHOLE) for i in range(4)]
    source = write_source(tmp_path / "src.csv", server, rows)
    options = FetchOptions(**{**FAST.__dict__, "limit": 2})
    result = fetch_dataset(source, tmp_path / "out", options)
    assert [r.image_id for r in result.dataset.records] == ["lim0", "lim1"]
    assert server.requests["/good/lim2.jpg"] == 0


def test_cli_prints_the_summary_and_exits_0(server: Server, tmp_path: Path) -> None:
    rows = [("cli_ok", "/good/cli.jpg", WHOLE), ("cli_404", "/cli-missing.jpg", WHOLE)]
    source = write_source(tmp_path / "src.csv", server, rows)
    out = tmp_path / "out"
    args = ["dataset", "fetch", str(source), str(out), "--timeout", "1", "--deadline", "2", "--retries", "0"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "1 fetched, 0 already there, 1 failed" in result.output
    assert f"{out / FAILURES_FILE}" in result.output
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 0 and "0 fetched, 1 already there, 1 failed" in again.output


def test_cli_exits_1_with_one_line_when_nothing_can_be_fetched(server: Server, tmp_path: Path) -> None:
    rows = [("none1", "/none1.jpg", WHOLE), ("none2", "/html", WHOLE)]
    source = write_source(tmp_path / "src.csv", server, rows)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["dataset", "fetch", str(source), str(out), "--retries", "0"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "none of the 2 images could be fetched" in errors[0], result.output
    assert FAILURES_FILE in errors[0] and (out / FAILURES_FILE).is_file()
    assert not (out / "dataset.csv").exists()


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        (["x", "http://h/x.jpg", "0.5", "0", "0.4", "1", "1", "2"], "not inside 0..1"),
        (["x", "http://h/x.jpg", "0", "0", "1", "1", "1001", "2"], "TrueLabel '1001'"),
        (["../x", "http://h/x.jpg", "0", "0", "1", "1", "1", "2"], "ImageId '../x'"),
        (["x", "http://h/x.jpg", "0", "0", "1", "1", "\u00b2", "2"], "TrueLabel '\u00b2'"),  # isdigit(), not int()
    ],
)
def test_a_bad_description_row_is_refused_before_any_download(tmp_path: Path, row: list[str], problem: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(",".join(HEADER[:8]) + "\n" + ",".join(row) + "\n")
    with pytest.raises(DataSetError, match=problem.replace(".", r"\.")):
        read_source(path)


@pytest.mark.parametrize(("name", "rows"), [("dev_dataset.csv", 1000), ("final_dataset.csv", 5000)])
def test_shipped_nips17_descriptions_parse(name: str, rows: int) -> None:
    columns, parsed = read_source(REPO / "dataset" / "nips17" / name)
    assert columns == HEADER
    assert len(parsed) == rows == len({r.image_id for r in parsed})
    assert all(r.url.startswith("https://") for r in parsed)
    assert all(1 <= int(r.row["TrueLabel"]) <= 1000 for r in parsed)


def test_shipped_nips17_readme_states_provenance() -> None:
    text = (REPO / "dataset" / "nips17" / "README.md").read_text()
    assert "cleverhans" in text and "CC BY" in text and "TF-Slim" in text


def test_out_that_is_a_file_is_refused(server: Server, tmp_path: Path) -> None:
    source = write_source(tmp_path / "src.csv", server, [("f", "/good/f.jpg", WHOLE)])
    (tmp_path / "out").write_text("")
    with pytest.raises(DataSetError, match="not a folder"):
        fetch_dataset(source, tmp_path / "out", FAST)


def test_a_content_length_that_is_no_number_is_ignored_not_a_crash(server: Server) -> None:
    import requests

    with requests.Session() as session:
        assert download(session, server.url("/odd-length"), FAST) == JPEG
