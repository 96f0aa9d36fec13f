"""The ``dpiat-jax`` command line: ``main`` is the console script's entry point.

Subcommands: ``demo``, ``experiment``, ``methods`` (:mod:`dpiat_jax.cli.experiments`) and
``transfer``, ``match``, ``rank`` on orbax checkpoints (:mod:`dpiat_jax.cli.checkpoints`),
registered in :mod:`dpiat_jax.cli.registry`.
"""

from dpiat_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
