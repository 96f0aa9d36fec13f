"""Options: the keyword options of a transfer, validated before any tracing.

Unknown names fail at once, with the valid choices named.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from dpiat_jax.deepening import check_deepen
from dpiat_jax.fused import FusedRule, parse_fused
from dpiat_jax.matchers import Matcher, matcher_name
from dpiat_jax.tensors import TensorFn, TensorRule, get_tensor_rule

__all__ = ["NONFINITE_POLICIES", "Options"]

#: What to do with a non-finite source tensor that is copied.
NONFINITE_POLICIES = ("warn", "raise", "ignore")


@dataclasses.dataclass(frozen=True)
class Options:
    """The matcher, the tensor rule and the non-finite policy, validated.

    Attributes:
      matcher: a name in ``dpiat_jax.matchers.MATCHERS`` or a matcher function.
      tensor_rule: a name in ``dpiat_jax.tensors.TENSOR_RULES``, a
        :class:`~dpiat_jax.tensors.TensorRule` or a function ``(src, dst, rng) -> array``.
      on_nonfinite: one of :data:`NONFINITE_POLICIES`.
      fused: layer-name pattern -> part count (or ``(count, axis)``) of fused
        projections the forward pass does not reveal (:mod:`dpiat_jax.fused`).
      deepen: None, or ``"identity"``: where one source block seeds a run of target
        blocks, the later blocks of the run start as identities (:mod:`dpiat_jax.deepening`).

    Raises:
      ValueError: an unknown matcher, tensor rule, policy or ``deepen``, naming the
        choices.

    >>> options = Options(tensor_rule="magnitude")
    >>> options.matcher_name, options.rule.name, options.on_nonfinite
    ('dp', 'magnitude', 'warn')
    """

    matcher: str | Matcher = "dp"
    tensor_rule: str | TensorRule | TensorFn = "clip"
    on_nonfinite: str = "warn"
    fused: Mapping[str, int | tuple[int, int]] | None = None
    deepen: str | None = None

    def __post_init__(self) -> None:
        parse_fused(self.fused)
        check_deepen(self.deepen)
        get_tensor_rule(self.tensor_rule)
        matcher_name(self.matcher)
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(
                f"Unknown on_nonfinite {self.on_nonfinite!r}; use one of "
                f"{list(NONFINITE_POLICIES)}."
            )

    @property
    def matcher_name(self) -> str:
        """The matcher's name (a function's ``__name__``)."""
        return matcher_name(self.matcher)

    @property
    def fused_rules(self) -> tuple[FusedRule, ...]:
        """The validated ``fused=`` rules."""
        return parse_fused(self.fused)

    @property
    def rule(self) -> TensorRule:
        """The tensor rule record."""
        return get_tensor_rule(self.tensor_rule)
