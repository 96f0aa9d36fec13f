"""Experiments around the library, laid out like flax's ``examples/imagenet``.

- :mod:`dpiat_jax.experiments.data`: offline digits and MNIST-1D, TFDS datasets;
- :mod:`dpiat_jax.experiments.train`: an optax training loop with orbax checkpoints;
- :mod:`dpiat_jax.experiments.protocol`: the published experiment protocol;
- :mod:`dpiat_jax.experiments.methods`: the matcher x tensor-rule methods table;
- :mod:`dpiat_jax.experiments.demo`: the offline demo;
- ``configs/``: the shipped experiment configs (JSON).

These modules need the ``[experiments]`` extra (``pip install "dpiat-jax[experiments]"``);
the library itself (``import dpiat_jax``) never imports them.
"""
