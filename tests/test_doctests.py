"""Every example in the library's docstrings runs as written (``doctest``)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import dpiat_jax

# The periphery (experiments, command line) trains models and writes files; its
# docstrings describe, they do not carry examples.
_SKIP = ("dpiat_jax.experiments", "dpiat_jax.cli")


def _modules() -> list[str]:
    names = ["dpiat_jax"]
    for info in pkgutil.walk_packages(dpiat_jax.__path__, "dpiat_jax."):
        if not info.name.startswith(_SKIP) and "._" not in info.name:
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    module = importlib.import_module(name)
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(module, optionflags=flags, verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
