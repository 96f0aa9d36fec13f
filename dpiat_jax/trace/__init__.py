"""Trace adapters: how the layers of a linen module or an NNX model are discovered.

- :mod:`dpiat_jax.trace.linen`: a linen module's call order from an abstract init;
- :mod:`dpiat_jax.trace.nnx`: an NNX model's call order and variables;
- :mod:`dpiat_jax.trace.inputs`: call arguments, input inference and input errors;
- :mod:`dpiat_jax.trace.adapter`: one adapter per kind of model (linen, NNX, Hugging
  Face, ``TrainState``); :mod:`dpiat_jax.trace.huggingface`: what a Hugging Face Flax
  model object carries (variables, a default input, inference mode);
- :mod:`dpiat_jax.trace.factors`: the factors of parameter dimensions through the
  forward pass (fused parts, attention heads).

The linen and NNX tracers produce :class:`~dpiat_jax.layers.ModuleCall` records from which
:func:`~dpiat_jax.layers.build_hierarchy` builds the framework-independent hierarchy.
"""
