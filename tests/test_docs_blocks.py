"""Every fenced ``python`` block of README.md and of every page under docs/ runs, page by page.

Each page is one namespace, as doctest runs a module: a block may use what an earlier block of
the same page defined. The blocks run on the CPU in a temporary working directory, so files they
write land there.

A block that cannot run on its own (it needs a GPU, a download or a long training run, or it is
an excerpt of funcbp's source rather than a program) is marked, visibly in the page, by a
paragraph right above its fence that starts with ``*Not run as a test:`` and gives the reason::

    *Not run as a test: an excerpt of funcbp/autodiff/interpreter.py.*

    ```python
    for eqn in reversed(jaxpr.eqns):
        ...
    ```

A mark without a reason fails, so nothing is skipped silently. The commands the pages show
(``funcbp SUBCOMMAND`` in shell blocks and inline code) must be subcommands that exist.
"""

from __future__ import annotations

import re
import traceback
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
MARK = re.compile(r"^\*Not run as a test:(?P<reason>.*?)\*$", re.S)
FENCE = re.compile(r"^(?P<indent>\s*)```(?P<info>[\w+-]*)")


def blocks(page: Path) -> list[dict]:
    """The fenced blocks of ``page``: language, first line number, code, and any mark."""
    lines = page.read_text().splitlines()
    found, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent = i, m["indent"]
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(indent + "```"):
            body.append(lines[i][len(indent):])
            i += 1
        i += 1
        before = []  # the paragraph right above the fence
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        while j >= 0 and lines[j].strip():
            before.insert(0, lines[j].strip())
            j -= 1
        mark = MARK.match(" ".join(before))
        found.append({"lang": m["info"], "line": start + 1, "code": "\n".join(body) + "\n",
                      "mark": None if mark is None else mark["reason"].strip()})
    return found


PYTHON_PAGES = [p for p in PAGES if any(b["lang"] == "python" for b in blocks(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[str(p.relative_to(ROOT)) for p in
                                                    PYTHON_PAGES])
def test_every_python_block_of_the_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    name = page.relative_to(ROOT)
    for block in (b for b in blocks(page) if b["lang"] == "python"):
        if block["mark"] is not None:
            continue  # test_marked_blocks_say_why lists them
        try:
            exec(compile(block["code"], f"{name}:{block['line']}", "exec"), namespace)
        except Exception:
            pytest.fail(f"{name}: the python block at line {block['line']} raised:\n"
                        f"{traceback.format_exc(limit=-3)}", pytrace=False)


def test_marked_blocks_say_why():
    marked = [(p.relative_to(ROOT), b["line"], b["mark"]) for p in PAGES for b in blocks(p)
              if b["mark"] is not None]
    print("\n".join(f"not run: {page}:{line}: {reason}" for page, line, reason in marked))
    assert all(reason for _, _, reason in marked), marked
    assert all(b["lang"] == "python" for p in PAGES for b in blocks(p) if b["mark"]), \
        "only python blocks are run, so only they take the mark"


def test_documented_subcommands_exist():
    from funcbp.cli import COMMANDS

    used = set()
    for page in PAGES:
        for block in blocks(page):
            if block["lang"] in ("bash", "sh", "console", "shell"):
                used |= set(re.findall(r"^\$?\s*(?:\S*/)?funcbp ([a-z][\w-]*)", block["code"],
                                       re.M))
        used |= set(re.findall(r"`(?:\S*/)?funcbp ([a-z][\w-]*)", page.read_text()))
    assert used, "no funcbp command found in the docs: the pattern is wrong"
    assert used <= set(COMMANDS), sorted(used - set(COMMANDS))
