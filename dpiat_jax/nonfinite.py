"""The non-finite policy: what happens when a copied source tensor holds NaN or inf.

``"warn"`` (a ``RuntimeWarning``), ``"raise"`` (``FloatingPointError``) or ``"ignore"``.
The check is one boolean per source tensor, computed inside the transfer program where
the arrays live (:func:`finite_flags`). :func:`enforce` acts on them: on the host when
they are concrete, through ``jax.debug.callback`` when they are traced inside a user's
``jax.jit`` (a ``"raise"`` there surfaces as the runtime error of the call, with the
same message).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["nonfinite_message", "finite_flags", "enforce"]


def nonfinite_message(names: Sequence[str]) -> str:
    """Returns the message that names the non-finite source tensors.

    Args:
      names: the tensors' ``"/"``-joined keys.

    Returns:
      One sentence naming up to five tensors and the fix.

    >>> nonfinite_message(["params/a/kernel"])[:60]
    '`src_params` has non-finite values (NaN or inf) in params/a/'
    """
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"`src_params` has non-finite values (NaN or inf) in {shown}, which the transfer "
        "copies into the target. Fix the source (or pass on_nonfinite='ignore' to copy "
        "them anyway, or on_nonfinite='raise' to stop)."
    )


def finite_flags(arrays: Sequence[jax.Array]) -> jax.Array:
    """Returns one boolean per array: all its values are finite (jittable).

    Args:
      arrays: floating-point arrays.

    Returns:
      A ``bool[len(arrays)]`` array.

    >>> finite_flags([jnp.ones(2), jnp.array([jnp.nan])])
    Array([ True, False], dtype=bool)
    """
    if not arrays:
        return jnp.ones((0,), bool)
    return jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays])


def _act(policy: str, names: tuple[str, ...], flags: np.ndarray, stacklevel: int) -> None:
    bad = [n for n, ok in zip(names, np.asarray(flags)) if not ok]
    if not bad or policy == "ignore":
        return
    message = nonfinite_message(bad)
    if policy == "raise":
        raise FloatingPointError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=stacklevel)


def enforce(policy: str, names: Sequence[str], flags: jax.Array) -> None:
    """Applies the policy to the flags of :func:`finite_flags`.

    Args:
      policy: ``"warn"``, ``"raise"`` or ``"ignore"``.
      names: the tensors' names, one per flag.
      flags: concrete flags (acted on now) or traced ones (a ``jax.debug.callback``
        acts when the program runs).

    Raises:
      FloatingPointError: under ``"raise"`` with concrete flags, naming the tensors.

    >>> enforce("raise", ["params/a/kernel"], jnp.array([True]))
    """
    if policy == "ignore" or len(names) == 0:
        return
    names = tuple(names)
    if isinstance(flags, jax.core.Tracer):
        act = functools.partial(_act, policy, names, stacklevel=2)
        # The host is only called when a tensor is not finite: no cost otherwise.
        jax.lax.cond(jnp.all(flags), lambda f: None, lambda f: jax.debug.callback(act, f), flags)
    else:
        _act(policy, names, jax.device_get(flags), stacklevel=5)
