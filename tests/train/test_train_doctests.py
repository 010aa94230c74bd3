"""The examples in funcbp.train's and funcbp.cli's docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["funcbp.train.checkpoint", "funcbp.train.step", "funcbp.train.models",
           "funcbp.train.rundir", "funcbp.train.fit", "funcbp.train.config", "funcbp.cli",
           "funcbp.train.configfile", "funcbp.train.manager", "funcbp.train.precision",
           "funcbp.train.userdata", "funcbp.train.writers", "funcbp.train.export",
           "funcbp.train.adapters", "funcbp.train.loop", "funcbp.train.report",
           "funcbp.train.summary", "funcbp.train.stepping"]


#: Modules whose examples need an optional package (skipped without it).
NEEDS = {"funcbp.train.export": "safetensors"}


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
