"""The README and docs/ do not drift from the code (issue 32): every ``unioncam`` command in a code
block names a subcommand and options that exist, every relative link resolves, the README stays a
newcomer's page, and a measured time per photo is stated in one place (its results file)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from unioncam.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def options() -> dict[str, set[str]]:
    """{subcommand: its option strings}, the global options under ""."""
    parser = build_parser()
    out = {"": {s for a in parser._actions for s in a.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out[name] = {s for a in sub._actions for s in a.option_strings}
    return out


def commands(page: Path) -> list[str]:
    """The ``unioncam ...`` commands of a page: its code blocks' lines (continuations joined) and
    its inline code spans; usage lines (``unioncam [--verbose] COMMAND ...``) are skipped."""
    text = page.read_text()
    found = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            found += [m.group(1) for m in re.finditer(r"(?:^|&&\s*|\$\s*|\|\s*)unioncam\s+(.*)", line)]
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    found += re.findall(r"`unioncam ([a-z][^`]*)`", prose)
    return [c for c in found if "COMMAND" not in c]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_command_names_options_that_exist(page):
    known = options()
    for cmd in commands(page):
        words = re.sub(r"[\[\]|]", " ", cmd).split()
        globals_ = [w for w in words if w in known[""]]
        sub = next((w for w in words if not w.startswith("-") and w not in globals_), None)
        assert sub in known, f"{page.name}: `unioncam {cmd}`: no subcommand {sub!r}"
        for flag in re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", cmd):
            assert flag in known[sub] or flag in known[""], f"{page.name}: `unioncam {cmd}`: {sub} has no {flag}"


def test_the_pages_have_commands_to_check():
    assert len(commands(ROOT / "README.md")) >= 6 and sum(len(commands(p)) for p in PAGES) >= 20


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    for target in re.findall(r"\]\(([^)#\s]+)[^)]*\)", page.read_text()):
        if "://" in target:
            continue
        assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_the_readme_is_a_newcomers_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 160
    lines = text.splitlines()
    first_block = text.split("```")[1]
    assert "unioncam explain" in first_block and "python -m pytest" in first_block
    # A time per photo lives in its results file, never restated in the README.
    assert not re.search(r"\d+(\.\d+)? s (a|per) photo", text), "a per-photo time is stated in the README"
    assert any("docs/guarantees.md" in ln for ln in lines)
