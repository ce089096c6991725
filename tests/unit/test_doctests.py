"""The examples in the modules' docstrings run, and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["stream.scoring.detectors", "stream.features.expr", "stream.scoring.thresholds",
           "stream.outcomes.suppress", "stream.ops.secured", "stream.ops.drift"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
