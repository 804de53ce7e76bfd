"""The Markdown documentation links only to files inside the repository, and every such link resolves.

A user who clones the project gets the repository and nothing else: a link to a file outside it (a steering
folder beside the checkout, a path on a developer's machine) is a dead link for everyone else. No Docker needed.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parent.parent


def documents() -> list[Path]:
    """README.md, CONTRIBUTING.md, docs/*.md, training/README.md and every sample's README.md."""
    found = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
    found.append(REPO / "training" / "README.md")
    for samples in ("sample_attacks", "sample_targeted_attacks", "sample_defenses"):
        found.extend(sorted((REPO / samples).glob("*/README.md")))
    return [path for path in found if path.is_file()]


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1", re.DOTALL)
# [text](target) and ![alt](target), the target optionally in <...> and followed by a "title".
_INLINE = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*(<[^>\n]*>|[^)\s]*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*(<[^>\n]*>|\S+)", re.MULTILINE)
_HTML = re.compile(r"<(?:a|img)\s[^>]*?(?:href|src)\s*=\s*[\"']([^\"']*)[\"']", re.IGNORECASE)
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def _prose(text: str) -> str:
    """The text without fenced code blocks and code spans: a link written inside code is not a link."""
    lines, fence = [], None
    for line in text.splitlines():
        match = _FENCE.match(line)
        if fence is None and match:
            fence = match.group(1)[0] * len(match.group(1))
            lines.append("")
        elif fence is not None:
            if line.strip().startswith(fence) and not line.strip().strip(fence[0]):
                fence = None
            lines.append("")
        else:
            lines.append(line)
    return _CODE_SPAN.sub("code", "\n".join(lines))


def links(path: Path) -> list[str]:
    """Every link target of a Markdown file, in order: inline, reference definitions and HTML."""
    text = _prose(path.read_text(encoding="utf-8"))
    targets = [match.group(1) for pattern in (_INLINE, _REFERENCE, _HTML) for match in pattern.finditer(text)]
    return [target[1:-1] if target.startswith("<") and target.endswith(">") else target for target in targets]


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    text = unicodedata.normalize("NFC", text).lower()
    text = "".join(ch for ch in text if ch in " -_" or unicodedata.category(ch)[0] in "LN")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, with GitHub's -1, -2 suffixes for repeated headings."""
    seen: dict[str, int] = {}
    result = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def link_problem(document: Path, target: str) -> str | None:
    """Why `target`, linked from `document`, is not a file inside the repository; None when it is fine."""
    if _SCHEME.match(target):
        scheme = target.split(":", 1)[0].lower()
        return None if scheme in ("http", "https", "mailto") else f"'{target}': a {scheme}: link leaves the repository"
    path_part, _, fragment = target.partition("#")
    path_part = unquote(path_part)
    if not path_part:  # an anchor in the document itself
        return None if unquote(fragment).lower() in anchors(document) else f"'{target}': no heading has this anchor"
    if path_part.startswith(("/", "\\", "~")):
        return f"'{target}': an absolute path, which a clone does not have; link relative to {document.name}"
    resolved = (document.parent / path_part).resolve()
    if not resolved.is_relative_to(REPO):
        return f"'{target}': points outside the repository; link a file inside it (docs/contract.md, say)"
    if not resolved.exists():
        return f"'{target}': no such file or folder ({resolved.relative_to(REPO)})"
    if fragment and resolved.suffix == ".md" and unquote(fragment).lower() not in anchors(resolved):
        return f"'{target}': {resolved.relative_to(REPO)} has no heading with the anchor #{fragment}"
    return None


def test_the_documents_to_check_exist():
    names = {path.relative_to(REPO).as_posix() for path in documents()}
    assert {"README.md", "CONTRIBUTING.md", "docs/contract.md", "docs/architecture.md"} <= names
    assert "training/README.md" in names and any(name.startswith("sample_attacks/") for name in names)


@pytest.mark.parametrize("document", documents(), ids=lambda path: path.relative_to(REPO).as_posix())
def test_every_link_resolves_inside_the_repository(document: Path):
    problems = [problem for target in links(document) if (problem := link_problem(document, target))]
    assert not problems, f"{document.relative_to(REPO)}: " + "; ".join(problems)


@pytest.mark.parametrize("document", documents(), ids=lambda path: path.relative_to(REPO).as_posix())
def test_no_document_names_the_steering_folder(document: Path):
    """Users never have the team's steering folder: the contract is docs/contract.md."""
    text = document.read_text(encoding="utf-8")
    assert "../shared" not in text and "SPEC.md" not in text, f"{document.relative_to(REPO)}: use docs/contract.md"


def test_the_link_checker_sees_what_it_must(tmp_path: Path):
    """The checker itself: links in code are ignored, and every kind of bad link is caught."""
    text = (
        "# Title\n\n## A `code` heading, with punctuation!\n\n"
        "[ok](README.md) [anchor](#a-code-heading-with-punctuation) ![img](docs/contract.md 'title')\n"
        "[ref]: CONTRIBUTING.md\n"
        "`[in code](../shared/SPEC.md)`\n```\n[in a fence](/etc/passwd)\n```\n"
        "[up](../shared/SPEC.md) [abs](/work/main/README.md) [gone](docs/nothing.md) [bad](#nowhere)\n"
        '<a href="file:///etc/passwd">x</a> [web](https://example.org)\n'
    )
    document = REPO / "CONTRIBUTING.md"  # any file at the root: targets resolve against the repository
    fake = tmp_path / "doc.md"
    fake.write_text(text)
    found = links(fake)
    assert "../shared/SPEC.md" in found and "/etc/passwd" not in found
    assert "#a-code-heading-with-punctuation" in found and "CONTRIBUTING.md" in found
    assert "a-code-heading-with-punctuation" in anchors(fake)
    problems = {target: link_problem(document, target) for target in found if not target.startswith("#")}
    assert problems["README.md"] is None and problems["docs/contract.md"] is None
    assert problems["CONTRIBUTING.md"] is None and problems["https://example.org"] is None
    assert "outside the repository" in problems["../shared/SPEC.md"]
    assert "absolute path" in problems["/work/main/README.md"]
    assert "no such file" in problems["docs/nothing.md"]
    assert "leaves the repository" in problems["file:///etc/passwd"]
    assert link_problem(fake, "#a-code-heading-with-punctuation") is None
    assert "no heading" in (link_problem(fake, "#nowhere") or "")
