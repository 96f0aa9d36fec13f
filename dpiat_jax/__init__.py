"""dpiat_jax."""
