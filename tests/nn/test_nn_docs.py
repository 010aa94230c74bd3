"""The code on docs/nn.md and docs/losses.md runs, and prints what the page says it prints."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[2] / "docs"


@pytest.mark.parametrize("page", ["nn.md", "losses.md"])
def test_doc_page_code_runs_and_prints_what_it_says(page):
    text = (DOCS / page).read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks
    namespace, out = {}, io.StringIO()
    expected = []
    for block in blocks:
        lines = block.splitlines()
        for prev, line in zip(lines, lines[1:]):
            if prev.lstrip().startswith("print(") and line.startswith("# "):
                expected.append(line[2:])
        with contextlib.redirect_stdout(out):
            exec(compile(block, f"{page}", "exec"), namespace)  # noqa: S102
    assert out.getvalue().splitlines() == expected
