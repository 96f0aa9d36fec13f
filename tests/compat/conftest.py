"""Configuration of the compatibility suite (``tests/compat``).

Models are built from configs with random weights; nothing is downloaded (the Hugging
Face hub is switched off for the test process, so a stray ``from_pretrained`` fails
instead of reaching the network). The versions of the model packages are printed in the
test header. A missing package fails its module (:func:`compat.checks.require`) unless
``DPIAT_SKIP_COMPAT=1`` is set.
"""

from __future__ import annotations

import importlib.metadata
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PACKAGES = ("transformers", "flaxmodels")


def pytest_report_header(config) -> list[str]:
    """The compat packages' versions (or "missing"), for CI logs."""
    del config
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{name} missing")
    return ["compat packages: " + ", ".join(found)]
