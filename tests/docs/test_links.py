"""Every relative link and image of README.md, docs/*.md and the notebooks' text points to a file that exists,
and every ``#anchor`` into a markdown page to one of its headings (GitHub's heading slugs)."""

import json
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

REPO = Path(__file__).resolve().parents[2]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
FENCE = re.compile(r"^```.*?^```", re.M | re.S)


def markdown_of(path: Path) -> str:
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()  # a link's text only
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    headings = re.findall(r"^#{1,6} (.+)$", FENCE.sub("", markdown_of(path)), re.M)
    seen: dict[str, int] = {}
    out = set()
    for heading in headings:  # a repeated heading gets -1, -2, ...
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def links(path: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", markdown_of(path)))


def broken_links(page: Path) -> list[str]:
    broken = []
    for target in links(page):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue  # the web is not checked here
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix in (".md", ".ipynb") and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.name}")
    return broken


PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted((REPO / "notebooks").glob("*.ipynb"))]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_point_to_files_and_headings_that_exist(page):
    broken = broken_links(page)
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def test_the_link_checker_catches(tmp_path):
    assert slug("The simulated task suite (`config.evals.tasks`)") == "the-simulated-task-suite-configevalstasks"
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs/there.md").write_text("# A page\n\n## Set up and run\n")
    (tmp_path / "pic.png").write_bytes(b"")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/there.md#set-up-and-run) ![ok](pic.png) [ok](https://example.org/x.md)\n"
                    "[gone](docs/none.md) ![gone](docs/none.png) [bad anchor](docs/there.md#set-up)\n"
                    "```\n[in a code block](not/checked.md)\n```\n")
    assert broken_links(page) == ["docs/none.md: no such file", "docs/none.png: no such file",
                                  "docs/there.md#set-up: no heading #set-up in there.md"]
