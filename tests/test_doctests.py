"""The examples in the package's docstrings are tests too: every module's doctests pass."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import corestate

MODULES = sorted(m.name for m in pkgutil.walk_packages(corestate.__path__, "corestate.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_module_doctests_pass(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
