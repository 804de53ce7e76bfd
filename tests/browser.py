"""A page as a person sees it: rendered by headless Chromium (Debian's `chromium`), its DOM after loading read back
with --dump-dom, and what went wrong on the way (script errors, console errors, failed loads, any network fetch)
recorded by a small script put in front of the page's own content."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pytest
from PIL import Image

IN_CI = os.environ.get("CI", "").lower() == "true"
RECORDER_ID = "test-recorder"
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}
# Elements a browser lays out apart from their neighbours: their text never runs into the next element's.
SEPARATE = {
    "br",
    "p",
    "div",
    "section",
    "table",
    "tr",
    "td",
    "th",
    "ul",
    "li",
    "dl",
    "dt",
    "dd",
    "pre",
    "details",
    "summary",
    "h1",
    "h2",
    "h3",
    "h4",
    "nav",
    "title",
}

# Runs before anything of the page: every error (script, console.error/warn, a resource that failed to load, an
# unhandled rejection) is appended to an attribute of <html>; after `load`, so are every resource the page
# fetched (data: URIs are not fetches) and the boxes of the elements asked for, in page coordinates.
_RECORDER = """<script id="%s">(function () {
  var root = document.documentElement, errors = [];
  function note(message) {
    errors.push(String(message));
    root.setAttribute("data-test-errors", JSON.stringify(errors));
  }
  root.setAttribute("data-test-errors", "[]");
  window.addEventListener("error", function (e) {
    var t = e.target;
    note(e.message || ("failed to load " + (t && (t.src || t.href || t.tagName))));
  }, true);
  window.addEventListener("unhandledrejection", function (e) { note("unhandled rejection: " + e.reason); });
  ["error", "warn"].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      note(level + ": " + Array.prototype.join.call(arguments, " "));
      return original.apply(console, arguments);
    };
  });
  window.addEventListener("load", function () {
    var fetched = performance.getEntriesByType("resource").map(function (r) { return r.name; });
    root.setAttribute("data-test-resources", JSON.stringify(fetched));
    var boxes = {};
    %s.forEach(function (selector) {
      var element = document.querySelector(selector);
      if (!element) { return; }
      var box = element.getBoundingClientRect();
      boxes[selector] = [box.left + window.scrollX, box.top + window.scrollY, box.width, box.height];
    });
    root.setAttribute("data-test-boxes", JSON.stringify(boxes));
    root.setAttribute("data-test-loaded", "yes");
  });
})();</script>"""


def chromium() -> str:
    """The browser, or a skip on a developer machine without it; CI must have it (a skip would hide the report)."""
    path = shutil.which("chromium")
    if path is None:
        message = "chromium is not installed: apt-get install -y chromium"
        if IN_CI:
            pytest.fail(f"CI=true and {message}")
        pytest.skip(message)
    return path


def _run_chromium(args: list[str], timeout: float = 90) -> str:
    """One headless Chromium with a profile of its own, so that parallel runs do not share (or lock) one."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            chromium(),
            "--headless",
            "--no-sandbox",  # root in CI containers; the page is our own report
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            # Each frame waits for every stage (images decoded, blended) before it is drawn: a screenshot taken
            # while the machine was busy once caught the gallery's perturbation with one of its two images missing.
            "--run-all-compositor-stages-before-draw",
            *args,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"chromium exited {done.returncode}: {done.stderr[-2000:]}"
    return done.stdout


@dataclass
class Node:
    """An element of the rendered DOM, with the text a person reads in it."""

    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)
    parent: Node | None = None

    def text(self) -> str:
        """The text a person reads: inline elements run together, blocks and line breaks stand apart, and runs of
        white space fold into one space."""
        return " ".join(self._raw().split())

    def _raw(self) -> str:
        inner = "".join(c if isinstance(c, str) else c._raw() for c in self.children)
        return f" {inner} " if self.tag in SEPARATE else inner

    def iter(self):
        yield self
        for child in self.children:
            if isinstance(child, Node):
                yield from child.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag)
            and (cls is None or cls in n.attrs.get("class", "").split())
            and all(n.attrs.get(k) == v for k, v in attrs.items())
        ]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = self.find_all(tag, cls, **attrs)
        assert found, f"no <{tag} class={cls} {attrs}> in the page"
        return found[0]

    def rows(self) -> list[list[str]]:
        """A table as a person reads it: the text of each cell, row by row."""
        return [[cell.text() for cell in row.children if isinstance(cell, Node)] for row in self.find_all("tr")]


class _TreeBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.current = self.root

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs}, parent=self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.current.children.append(Node(tag, {k: v or "" for k, v in attrs}, parent=self.current))

    def handle_endtag(self, tag: str) -> None:
        node: Node | None = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data: str) -> None:
        self.current.children.append(data)


def parse_dom(html: str) -> Node:
    builder = _TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


@dataclass
class Page:
    dom: Node
    errors: list[str]
    resources: list[str]
    boxes: dict[str, list[float]]


def open_page(path: Path, measure: tuple[str, ...] = (), width: int = 1400, height: int = 3000) -> Page:
    """Renders `path` (a copy with the recorder in front, beside it) and returns its DOM after `load`."""
    html = path.read_text(encoding="utf-8")
    head = html.index("<head>") + len("<head>")
    recorder = _RECORDER % (RECORDER_ID, json.dumps(list(measure)))
    probe = path.with_name(f"{path.stem}.probe.html")
    probe.write_text(html[:head] + recorder + html[head:], encoding="utf-8")
    dom = parse_dom(_run_chromium([f"--window-size={width},{height}", "--dump-dom", probe.as_uri()]))
    root = dom.find("html")
    assert root.attrs.get("data-test-loaded") == "yes", "the page never finished loading"
    return Page(
        dom,
        json.loads(root.attrs["data-test-errors"]),
        json.loads(root.attrs["data-test-resources"]),
        json.loads(root.attrs["data-test-boxes"]),
    )


def screenshot(path: Path, out: Path, width: int = 1400, height: int = 3000) -> Image.Image:
    """What the window shows, top `height` pixels of the page, at one device pixel per CSS pixel."""
    _run_chromium(
        [f"--window-size={width},{height}", "--force-device-scale-factor=1", f"--screenshot={out}", path.as_uri()]
    )
    return Image.open(out).convert("RGB")
