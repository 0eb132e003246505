"""README.md and docs/*.md: one screen of README, every relative link (and #anchor) resolves, every docs page is
linked from the README, and the CI's test command stays in the README. Reads files only (no network, < 1 s)."""
import glob
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "README.md")
PAGES = [README] + sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))
# markdown links and images [text](target) / ![alt](target), and HTML src="..." / href="..."
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|(?:src|href)=\"([^\"]+)\"")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE = re.compile(r"`[^`\n]*`")


def _text(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _links(path):
    """Relative link targets of a markdown file, code blocks and inline code left out."""
    text = CODE.sub("", FENCE.sub("", _text(path)))
    for match in LINK.finditer(text):
        target = match.group(1) or match.group(2)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ... are not checked
            yield target


def _slug(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    heading = CODE.sub(lambda m: m.group(0).strip("`"), heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading))


def _anchors(path):
    return {_slug(line.lstrip("#")) for line in FENCE.sub("", _text(path)).splitlines() if line.startswith("#")}


def test_readme_fits_one_screen_of_200_lines():
    assert len(_text(README).splitlines()) <= 200


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_relative_link_resolves(page):
    broken = []
    for target in _links(page):
        file_part, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(page), file_part)) if file_part else page
        rel = os.path.relpath(resolved, REPO).replace(os.sep, "/")
        if not os.path.exists(resolved):
            broken.append(f"{target} (no file {rel})")
        elif anchor and resolved.endswith(".md") and anchor not in _anchors(resolved):
            broken.append(f"{target} (no heading #{anchor} in {rel})")
    assert not broken, f"{os.path.relpath(page, REPO)}: broken links: {broken}"


def test_every_docs_page_is_linked_from_the_readme():
    linked = {os.path.normpath(os.path.join(REPO, t.partition("#")[0])) for t in _links(README)}
    assert not sorted(os.path.relpath(p, REPO) for p in set(PAGES[1:]) - linked)


def test_readme_keeps_the_quick_start_commands():
    """.ci/run runs `make test`, the test command README.md gives; `make demo` is the other quick-start command."""
    commands = [line.split("#")[0].strip() for line in _text(README).splitlines()]
    assert "make test" in commands and "make demo" in commands
    assert "<!-- converged-times -->" in _text(README)


def test_slug_follows_github():
    assert _slug(" Resume, determinism and errors") == "resume-determinism-and-errors"
    assert _slug("On your own GPU machine") == "on-your-own-gpu-machine"
    assert _slug("Use a trained model: export, `recommend`") == "use-a-trained-model-export-recommend"
