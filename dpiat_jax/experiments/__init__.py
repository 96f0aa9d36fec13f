"""Experiments around the library, laid out like flax's ``examples/imagenet``.

- :mod:`dpiat_jax.experiments.data`: offline digits and MNIST-1D, TFDS datasets;
- :mod:`dpiat_jax.experiments.train`: an optax training loop with orbax checkpoints;
- :mod:`dpiat_jax.experiments.config`: experiment configs (sources, targets, pairs, training);
- :mod:`dpiat_jax.experiments.runs`: pretrained sources and the cached training runs;
- :mod:`dpiat_jax.experiments.results`: ratios, statistics and CSV tables of the runs;
- :mod:`dpiat_jax.experiments.report`: ``results.md`` and the plots of an experiment;
- :mod:`dpiat_jax.experiments.protocol`: the published experiment protocol (the runner);
- :mod:`dpiat_jax.experiments.methods`: the matcher x tensor-rule methods table;
- :mod:`dpiat_jax.experiments.demo`: the offline demo;
- ``configs/``: the shipped experiment configs (JSON).

These modules need the ``[experiments]`` extra (``pip install ".[experiments]"`` in a
checkout); the library itself (``import dpiat_jax``) never imports them.
"""
