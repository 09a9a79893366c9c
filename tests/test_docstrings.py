"""Docstrings that cannot lie (issue 32): every example in the package runs as a doctest, and no
docstring cites a file outside the repository."""
from __future__ import annotations

import doctest
import importlib
import pkgutil
import re

import pytest

import unioncam


def modules_with_examples() -> list[str]:
    """Every module of the installed package whose source holds a ``>>>`` example."""
    found = []
    for info in pkgutil.walk_packages(unioncam.__path__, "unioncam."):
        if ".tensorrt" in info.name:  # needs a TensorRT module with a GPU behind it
            continue
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as f:
                if ">>>" in f.read():
                    found.append(info.name)
    return found


def test_the_examples_are_found():
    assert {"unioncam.methods.unioncam", "unioncam.methods.baselines"} <= set(modules_with_examples())


@pytest.mark.parametrize("name", modules_with_examples())
def test_every_docstring_example_runs(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, result


def test_no_docstring_cites_a_file_outside_the_repository():
    outside = re.compile(r"shared/notes|\.\./shared|/work/")
    for info in pkgutil.walk_packages(unioncam.__path__, "unioncam."):
        spec = importlib.util.find_spec(info.name)
        if spec and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as f:
                text = f.read()
            assert not outside.search(text), f"{info.name} cites {outside.search(text).group(0)}"
