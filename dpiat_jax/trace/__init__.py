"""Trace adapters: how the layers of a linen module or an NNX model are discovered.

- :mod:`dpiat_jax.trace.linen`: a linen module's call order from an abstract init;
- :mod:`dpiat_jax.trace.nnx`: an NNX model's call order and variables;
- :mod:`dpiat_jax.trace.inputs`: call arguments, input inference and input errors.

Both adapters produce :class:`~dpiat_jax.layers.ModuleCall` records from which
:func:`~dpiat_jax.layers.build_hierarchy` builds the framework-independent hierarchy.
"""
