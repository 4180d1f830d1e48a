"""The documentation: the MkDocs site (mkdocs.yml, docs/) builds with --strict, so a broken link, a
missing anchor or a page left out of the navigation fails; README.md's relative links and images
exist; and README's layout table names every top-level folder and every backend subpackage, and
only folders that exist. No torch: this runs on every supported Python."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
# [text](target) and ![alt](target); <img src="..."> and <a href="..."> for HTML in Markdown
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:img|a)\b[^>]*?\b(?:src|href)\s*=\s*["']([^"']+)["']""", re.IGNORECASE)


def test_mkdocs_build_is_strict_clean(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's notice about MkDocs 2.0, not a warning of ours
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "operators" / "settings" / "index.html").is_file()


def relative_targets(markdown: str) -> list[str]:
    """The link and image targets of a Markdown text that point into the repository."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.DOTALL)  # code blocks hold no links
    targets = MARKDOWN_LINK.findall(text) + HTML_LINK.findall(text)
    return [t for t in targets if not re.match(r"^([a-z][a-z0-9+.-]*:|#)", t, re.IGNORECASE)]


def test_readme_links_and_images_exist():
    targets = relative_targets(README.read_text())
    assert any(t.endswith(".png") for t in targets) and any(t.startswith("docs/") for t in targets), targets
    missing = [t for t in targets if not (ROOT / t.split("#", 1)[0]).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def test_relative_targets_finds_broken_links():
    """The parser the README check relies on sees every kind of link it must check."""
    text = ('see [a](docs/a.md#x), ![b](docs/images/b.png "title") and <img src="c.png" width="50">;\n'
            "[web](https://example.org) [here](#layout) `[no](code.md)`\n```\n[fenced](f.md)\n```\n")
    assert sorted(relative_targets(text)) == ["c.png", "code.md", "docs/a.md#x", "docs/images/b.png"]


def layout_paths() -> set[str]:
    """The first column of README's "Layout" table, without backquotes and trailing slashes."""
    section = README.read_text().split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return {row.split("|")[1].strip().strip("`").rstrip("/") for row in rows}


def tracked_folders() -> set[str]:
    """Top-level folders that git tracks files in, and backend's subpackages."""
    try:
        listed = subprocess.run(["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True,
                                timeout=60, check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"git ls-files failed ({exc}): not a git checkout")
    top = {path.split("/", 1)[0] for path in listed if "/" in path}
    packages = {str(init.parent.relative_to(ROOT)) for init in (ROOT / "backend").glob("*/__init__.py")}
    return top | packages


def test_readme_layout_table_matches_the_tree():
    paths = layout_paths()
    assert not [p for p in paths if not (ROOT / p).is_dir()], f"layout rows that are no folder: {paths}"
    unlisted = tracked_folders() - paths
    assert unlisted == set(), f"folders missing from README's layout table: {sorted(unlisted)}"
