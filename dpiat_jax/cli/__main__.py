"""``python -m dpiat_jax.cli``: the ``dpiat-jax`` command line."""

import sys

from dpiat_jax.cli.main import main

sys.exit(main())
