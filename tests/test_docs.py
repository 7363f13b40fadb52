"""The README and the reference pages link only to files and headings that exist, and the
README's two commands are the ones CI runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _anchors(markdown: str) -> set[str]:
    """GitHub's and MkDocs' slug of every heading: lower case, punctuation dropped, spaces
    to hyphens."""
    anchors = set()
    fence = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fence = not fence
        if fence or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        anchors.add(slug)
    return anchors


def _broken_links(page: Path) -> list[str]:
    text = page.read_text(encoding="utf-8")
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # an external address: not checked offline
        path_part, _, anchor = target.partition("#")
        linked = (page.parent / path_part).resolve() if path_part else page
        if not linked.exists():
            broken.append(f"{page.name}: {target} (no file {linked})")
        elif anchor and anchor not in _anchors(linked.read_text(encoding="utf-8")):
            broken.append(f"{page.name}: {target} (no heading #{anchor} in {linked.name})")
    return broken


def test_readme_and_docs_links_resolve() -> None:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = [problem for page in pages for problem in _broken_links(page)]
    assert broken == []


def test_anchor_check_catches_a_missing_heading(tmp_path: Path) -> None:
    page = tmp_path / "a.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [file](missing.md)\n", encoding="utf-8")
    assert _broken_links(page) == [
        "a.md: #nope (no heading #nope in a.md)",
        f"a.md: missing.md (no file {tmp_path / 'missing.md'})",
    ]


def _readme_commands() -> list[str]:
    """The command lines of the README's first code block, without their comments."""
    block = (ROOT / "README.md").read_text(encoding="utf-8").split("```bash\n", 1)[1]
    lines = block.split("```", 1)[0].splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.strip()]


def test_readme_gives_two_commands_and_ci_runs_the_test_command() -> None:
    setup, tests = _readme_commands()
    assert setup.endswith("&& accord simulate")
    install, _, run_tests = tests.partition(" && ")
    assert run_tests == "python3 -m pytest"
    ci = [
        line
        for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    # .ci/run installs with pip's quiet flags and runs lint between the halves.
    ci_install = next(line for line in ci if "pip install" in line)
    assert ci_install.replace(" --quiet --disable-pip-version-check", "") == (
        "python3 -m " + install
    )
    # Then the README's test command, and last the slow tests it leaves out.
    assert ci[-2:] == [run_tests, "scripts/test-slow"]
    slow = (ROOT / "scripts" / "test-slow").read_text(encoding="utf-8").splitlines()
    assert slow[-1] == 'exec python3 -m pytest -m slow "$@"'
    options = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert '-m "not slow"' in options["tool"]["pytest"]["ini_options"]["addopts"]
