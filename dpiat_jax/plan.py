"""The transfer plan: everything a transfer decides, from shapes alone, and one pure apply.

The pipeline splits in two, as optax splits a transformation into ``init`` and
``update`` (design.md):

* :func:`plan` traces both models abstractly (``jax.eval_shape``), builds the block
  trees, aligns them, pairs the layers and lists, for every target tensor, where its
  values come from (:class:`~dpiat_jax.variables.TensorMove`) or that it keeps its fresh
  init. No parameter array is read: the source's variables may be
  ``jax.ShapeDtypeStruct`` leaves. The result is a frozen :class:`TransferPlan`, a record
  a person reads (``str(plan)`` is the match report), saves and reloads (JSON).
* :meth:`TransferPlan.apply` is a pure function of arrays: the target's fresh init and
  every planned move in one program, which ``jax.jit`` compiles and shards
  (``jax.jit(plan.apply, out_shardings=...)``). Called eagerly it runs a compiled program
  cached on the plan. Its result never shares a buffer with the source, and no buffer
  appears twice in it, so donating the result never touches the source.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dpiat_jax.arguments import as_key, as_variables, split_inputs, split_kwargs
from dpiat_jax.blocks import blocks, to_spec_tree, tree_leaves
from dpiat_jax.channels import ChannelGraph, call_order_channels, target_channels
from dpiat_jax.coverage import warn_low_coverage
from dpiat_jax.deepening import (
    Deepening,
    IdentityBlock,
    plan_deepening,
    warn_kept,
    zero_tensors,
)
from dpiat_jax.matchers import Matcher, align
from dpiat_jax.matching import LayerPair, MatchReport, build_report, layer_pairs
from dpiat_jax.nonfinite import enforce, finite_flags
from dpiat_jax.options import Options
from dpiat_jax.placement import check_shardings, constrain, shardings_key
from dpiat_jax.similarity import alignment_similarity
from dpiat_jax.structure import structured_moves
from dpiat_jax.tensors import TENSOR_RULES, TensorFn, TensorRule, get_tensor_rule
from dpiat_jax.trace.adapter import Model, Traced, adapt, trace_target
from dpiat_jax.trace.inputs import Inputs, abstract_tree
from dpiat_jax.types import ArrayTree, PRNGKey, Variables
from dpiat_jax.variables import (
    ChannelGroup,
    TensorKey,
    TensorMove,
    apply_moves,
    checked_tensors,
    flat_variables,
    plan_channels,
    plan_moves,
    written_scalars,
)
from dpiat_jax.widening import (
    WidenedSpace,
    plan_widening,
    widened_moves,
    widened_sources,
    width_free,
)

__all__ = ["TransferPlan", "plan", "build_plan"]

_JSON_VERSION = 1


def _spec(x: Any) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(np.shape(x)), x.dtype)


def _is_traced(tree: ArrayTree) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


def _owned(flat: dict[TensorKey, Any], inputs: Sequence[Any]) -> dict[TensorKey, Any]:
    """Copies every output that is an input, a constant, or already an output, so the
    result holds its own buffers (jit would hand an unmodified input back as is)."""
    taken = {id(x) for x in inputs}
    out = {}
    for key, value in flat.items():
        if id(value) in taken or not isinstance(value, jax.core.Tracer):
            value = jnp.copy(value)
        taken.add(id(value))
        out[key] = value
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class TransferPlan:
    """What a transfer moves, decided from shapes: read it, save it, apply it.

    Attributes:
      report: the :class:`~dpiat_jax.matching.MatchReport` (pairs, scores, coverage,
        unmatched layers, tensors not moved).
      moves: one :class:`~dpiat_jax.variables.TensorMove` per target tensor that takes
        source values (source key, shapes, the centre slices, channel dimensions);
        every other target tensor keeps its fresh init.
      channel_groups: the channel selections a channel-selecting rule computes from
        the source's values inside :meth:`apply`.
      sources: source key -> ``jax.ShapeDtypeStruct`` of every source tensor read.
      target: target key -> ``jax.ShapeDtypeStruct`` of the target's whole fresh init,
        in its order.
      checked: the source tensors the non-finite check looks at.
      model: the target's adapter (:mod:`dpiat_jax.trace.adapter`): its ``init`` runs
        inside :meth:`apply`.
      sample_input: the target's input (abstract); call_kwargs: its keyword arguments.
      matcher: the matcher's name; rule: the tensor rule; on_nonfinite: the policy.
      widened: for a widening rule (``net2net``), the growing channel spaces of the
        target and the moves that widen along them (:mod:`dpiat_jax.widening`).
      deepening: what ``deepen="identity"`` did: the target blocks that start as
        identities and those kept (:mod:`dpiat_jax.deepening`).

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> class MLP(nn.Module):
    ...     width: int
    ...     @nn.compact
    ...     def __call__(self, x):
    ...         x = nn.relu(nn.Dense(self.width)(x))
    ...         return nn.Dense(2)(x)
    >>> p = plan(MLP(4), MLP(8), sample_input=jnp.zeros((1, 3)))
    >>> p.report.pairs
    (('Dense_0', 'Dense_0', 0.5), ('Dense_1', 'Dense_1', 0.5))
    >>> f"{p.coverage:.2f}", len(p.moves), p.moves[0].slices
    ('0.52', 4, ((slice(None, None, None),), (slice(2, 6, None),)))
    """

    report: MatchReport
    moves: tuple[TensorMove, ...]
    channel_groups: tuple[ChannelGroup, ...]
    sources: Mapping[TensorKey, jax.ShapeDtypeStruct]
    target: Mapping[TensorKey, jax.ShapeDtypeStruct]
    checked: tuple[TensorKey, ...]
    model: Model
    sample_input: ArrayTree
    call_kwargs: Mapping[str, Any]
    matcher: str
    rule: TensorRule
    on_nonfinite: str = "warn"
    widened: tuple[WidenedSpace, ...] = ()
    deepening: Deepening = Deepening()
    compiled: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    # ---------------------------------------------------------------- reading

    def __str__(self) -> str:
        """The report's table (as ``str(dpiat_jax.match(...))``), then what the growth
        options did (:meth:`growth_lines`), if anything."""
        return "\n".join([str(self.report), *self.growth_lines()])

    def growth_lines(self) -> list[str]:
        """Lines that say what ``net2net`` widened and ``deepen`` made an identity.

        Returns:
          One line for the widened channel spaces (naming those whose function is not
          preserved), one per identity block and one per block of a run kept as a copy;
          empty without growth.

        >>> import flax.linen as nn
        >>> import jax.numpy as jnp
        >>> mlp = lambda width: nn.Sequential([nn.Dense(width), nn.relu, nn.Dense(2)])
        >>> p = plan(mlp(4), mlp(6), sample_input=jnp.zeros((1, 3)), tensor_rule="net2net")
        >>> p.growth_lines()
        ['net2net: 1 channel space widened (function-preserving)']
        """
        lines = []
        if self.widened:
            mixed = [w.space for w in self.widened if not w.preserved]
            how = (
                "function-preserving"
                if not mixed
                else f"spaces {mixed} mix channels (a norm, attention, a flatten): not "
                "function-preserving"
            )
            count = len(self.widened)
            lines.append(f"net2net: {count} channel space{'s' * (count != 1)} widened ({how})")
        for block in self.deepening.identity:
            lines.append(f"deepen: {block.block} starts as an identity (run of {block.source})")
        for block, why in self.deepening.kept:
            lines.append(f"deepen: {block} keeps its copied values ({why})")
        return lines

    @property
    def coverage(self) -> float:
        """The fraction of the target's scalars written from the source."""
        return self.report.param_coverage

    @property
    def fresh(self) -> tuple[TensorKey, ...]:
        """The target tensors that keep their fresh init.

        >>> import flax.linen as nn
        >>> import jax.numpy as jnp
        >>> plan(nn.Dense(2), nn.Dense(4), sample_input=jnp.zeros((1, 3))).fresh
        ()
        """
        moved = {m.dst for m in self.moves}
        return tuple(k for k in self.target if k not in moved)

    def plot(self, path: str | None = None, **kwargs: Any) -> Any:
        """Draws the alignment (:func:`dpiat_jax.plotting.plot_report`; needs matplotlib).

        Args:
          path: where to save the figure (None: not saved).
          **kwargs: passed to :func:`~dpiat_jax.plotting.plot_report`.

        Returns:
          The matplotlib figure.
        """
        return self.report.plot(path, **kwargs)

    # ---------------------------------------------------------------- applying

    def apply(
        self,
        src_variables: Any,
        rng: PRNGKey | None = None,
        *,
        collections: Sequence[str] | None = None,
        out_shardings: Any = None,
    ) -> dict:
        """Builds the target's variables from the source's arrays (pure, jittable).

        The target's fresh init (``dst_def.init`` with the planned input shape and
        keyword arguments, ``rng`` for its ``params`` stream) and every planned move run
        in one program. Called eagerly, a compiled program cached on the plan runs (no
        recompilation for the next call); inside a user's ``jax.jit`` it is traced
        inline. Non-finite source tensors follow the plan's ``on_nonfinite``.

        Args:
          src_variables: the source's arrays: a variables dict, a params collection, a
            FrozenDict, or an NNX model, with the planned shapes (sharded arrays are read
            where they live).
          rng: a PRNG key for the fresh init and the rules (None: ``jax.random.key(0)``).
          collections: the target collections to return (default all).
          out_shardings: None, one ``jax.sharding.Sharding`` or a pytree of them with the
            result's structure: where the result is created.

        Returns:
          The target's variables, a plain nested dict with the structure, shapes and
          dtypes of its fresh init, sharing no buffer with ``src_variables``.

        Raises:
          ValueError: the source does not fit the plan, or ``out_shardings`` does not
            fit the result.
          FloatingPointError: a non-finite source tensor under ``on_nonfinite="raise"``
            (eagerly; inside ``jax.jit`` the call fails with the same message).

        >>> import flax.linen as nn
        >>> import jax.numpy as jnp
        >>> src, dst = nn.Dense(2), nn.Dense(4)
        >>> x = jnp.zeros((1, 3))
        >>> p = plan(src, dst, sample_input=x)
        >>> variables = {"params": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
        >>> out = jax.jit(p.apply)(variables, jax.random.key(0))
        >>> out["params"]["bias"]
        Array([0., 1., 1., 0.], dtype=float32)
        """
        variables, _ = as_variables(src_variables, "src_variables")
        sources = self._source_arrays(variables)
        rng = jax.random.key(0) if rng is None else as_key(rng)
        keep = self._collections(collections)
        names = ["/".join(k) for k in self.checked]
        if _is_traced((sources, rng)):
            out, flags = self._program(sources, rng, collections=keep)
            enforce(self.on_nonfinite, names, flags)
            return constrain(out, out_shardings)
        check_shardings(out_shardings, self._abstract_result(keep))
        program = self._compiled_program(keep, out_shardings)
        out, flags = program(sources, rng, self._held_init())
        enforce(self.on_nonfinite, names, flags)
        return out

    def _held_init(self) -> dict[TensorKey, Any] | None:
        """An NNX target's own variables (its fresh init), read outside the compiled
        program and passed in as an input, so that one program serves every call and
        every target of the same structure; None for a target whose init runs inside
        the program (linen, Hugging Face)."""
        if self.model.linen_module is not None:
            return None
        return flat_variables(self.model.init(None, self.sample_input, self.call_kwargs))

    def _collections(self, collections: Sequence[str] | None) -> tuple[str, ...]:
        present = tuple(dict.fromkeys(k[0] for k in self.target))
        if collections is None:
            return present
        return tuple(c for c in present if c in set(collections))

    def _abstract_result(self, keep: tuple[str, ...]) -> dict:
        return traverse_util.unflatten_dict({k: v for k, v in self.target.items() if k[0] in keep})

    def _source_arrays(self, variables: Variables) -> dict[TensorKey, jax.Array]:
        """The source arrays the plan reads, by key; a clear error when they misfit."""
        flat = flat_variables(variables)
        out, problems = {}, []
        for key, spec in self.sources.items():
            x = flat.get(key)
            if x is None:
                problems.append(f"{'/'.join(key)}: missing (expected shape {spec.shape})")
            elif tuple(np.shape(x)) != spec.shape:
                problems.append(
                    f"{'/'.join(key)}: shape {tuple(np.shape(x))}, the plan expects {spec.shape}"
                )
            else:
                out[key] = x
        if problems:
            shown = "\n  ".join(problems[:8])
            more = f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else ""
            raise ValueError(
                f"`src_variables` does not fit the plan:\n  {shown}{more}\nPass the "
                "variables of the source architecture the plan was made for."
            )
        return out

    def _compiled_program(self, keep: tuple[str, ...], out_shardings: Any):
        key = (keep, shardings_key(out_shardings))
        fn = self.compiled.get(key)
        if fn is None:
            shared = self._fingerprint(key)
            fn = None if shared is None else _PROGRAMS.get(shared)
            if fn is None:
                program = functools.partial(self._program, collections=keep)
                shardings = None if out_shardings is None else (out_shardings, None)
                fn = jax.jit(program, out_shardings=shardings)
                if shared is not None:
                    _PROGRAMS.put(shared, fn)
            self.compiled[key] = fn
        return fn

    def _fingerprint(self, key: tuple) -> tuple | None:
        """What the compiled program depends on, hashable; None when something is not
        (an unhashable keyword). Equal plans then share one program, so a repeated
        ``transfer`` between the same architectures compiles once. A target that cannot
        be hashed by value (a Hugging Face module holds its config object) counts by
        identity: the same object again. An NNX target's variables are an input of the
        program (:meth:`_held_init`), so its planned shapes stand for it."""
        module = self.model.linen_module
        parts = (
            key,
            "nnx" if module is None else _hashable(module),
            self.moves,
            self.channel_groups,
            tuple(self.sources.items()),
            tuple(self.target.items()),
            self.checked,
            abstract_tree(self.sample_input),
            tuple(sorted(self.call_kwargs.items())),
            self.rule,
            self.on_nonfinite,
            self.widened,
            self.deepening,
        )
        try:
            hash(parts)
        except TypeError:
            return None
        return parts

    def _program(
        self,
        sources: Mapping[TensorKey, jax.Array],
        rng: PRNGKey,
        held: Mapping[TensorKey, jax.Array] | None = None,
        *,
        collections: tuple,
    ) -> tuple[dict, jax.Array]:
        """The pure program: fresh init (``held``, the variables an NNX target holds,
        when given), moves, own buffers, finiteness flags."""
        if held is None:
            fresh = flat_variables(self.model.init(rng, self.sample_input, self.call_kwargs))
        else:
            fresh = dict(held)
        self._check_fresh(fresh)
        rule_rng = jax.random.fold_in(rng, 2)
        moves, moved, rule = self.moves, sources, self.rule
        if rule.widens_channels:  # widened sources, then clip for everything else
            key = jax.random.fold_in(rule_rng, 0)  # apply_moves folds in 1, 2, ...
            moves, moved = widened_sources(moves, self.widened, sources, key, rule.widen)
            rule = TENSOR_RULES["clip"]
        flat = apply_moves(moves, self.channel_groups, rule, moved, fresh, rule_rng)
        flat = zero_tensors(flat, self.deepening.zeroed)
        flat = _owned(
            {k: v for k, v in flat.items() if k[0] in collections},
            [*sources.values(), *(held or {}).values()],
        )
        checked = [] if self.on_nonfinite == "ignore" else [sources[k] for k in self.checked]
        return traverse_util.unflatten_dict(flat), finite_flags(checked)

    def _check_fresh(self, fresh: Mapping[TensorKey, Any]) -> None:
        got = {k: tuple(np.shape(v)) for k, v in fresh.items()}
        want = {k: v.shape for k, v in self.target.items()}
        if got != want:
            changed = sorted(set(got) ^ set(want)) or [k for k in want if got[k] != want[k]]
            raise ValueError(
                f"`dst_def`'s init no longer has the planned variables (first difference: "
                f"{'/'.join(changed[0])}). Make a new plan for this target."
            )

    # ---------------------------------------------------------------- saving

    def to_json(self) -> str:
        """Returns the plan as JSON text (:meth:`from_json` reads it back).

        A user function (matcher, tensor rule) is stored by name: loading needs the
        rule passed again. The report's block trees (for :meth:`plot`) are not stored.

        Returns:
          A JSON document.

        Raises:
          TypeError: the target input is not one array, or ``call_kwargs`` are not JSON.

        >>> import flax.linen as nn
        >>> import jax.numpy as jnp
        >>> p = plan(nn.Dense(2), nn.Dense(4), sample_input=jnp.zeros((1, 3)))
        >>> again = TransferPlan.from_json(p.to_json(), nn.Dense(4))
        >>> again.report.pairs == p.report.pairs, again.moves == p.moves
        (True, True)
        """
        _input_json(self.sample_input)  # fails early, before anything is built
        data = {
            "version": _JSON_VERSION,
            "matcher": self.matcher,
            "tensor_rule": self.rule.name,
            "on_nonfinite": self.on_nonfinite,
            "sample_input": _input_json(self.sample_input),
            "call_kwargs": dict(self.call_kwargs),
            "report": _report_json(self.report),
            "moves": [dataclasses.asdict(m) for m in self.moves],
            "channel_groups": [dataclasses.asdict(g) for g in self.channel_groups],
            "sources": [[list(k), *_spec_json(v)] for k, v in self.sources.items()],
            "target": [[list(k), *_spec_json(v)] for k, v in self.target.items()],
            "checked": [list(k) for k in self.checked],
            "widened": [dataclasses.asdict(w) for w in self.widened],
            "deepening": dataclasses.asdict(self.deepening),
        }
        try:
            return json.dumps(data)
        except TypeError as err:
            raise TypeError(
                f"TransferPlan.to_json: call_kwargs {dict(self.call_kwargs)} must hold JSON "
                f"values (bool, int, float, str): {err}"
            ) from err

    @classmethod
    def from_json(
        cls, text: str, dst_def: Any, *, tensor_rule: str | TensorRule | TensorFn | None = None
    ) -> TransferPlan:
        """Reads a plan saved by :meth:`to_json`.

        Args:
          text: the JSON document.
          dst_def: the target's definition (linen module or NNX model) the plan was made
            for; its variables are checked against the plan's.
          tensor_rule: the rule, when the plan was made with a user function (stored by
            its name only); built-in rules are found by name.

        Returns:
          The :class:`TransferPlan` (its report has no block trees to plot).

        Raises:
          ValueError: a user rule not passed again, or a target that does not fit.

        >>> import flax.linen as nn
        >>> import jax.numpy as jnp
        >>> text = plan(nn.Dense(2), nn.Dense(4), sample_input=jnp.zeros((1, 3))).to_json()
        >>> TransferPlan.from_json(text, nn.Dense(4)).rule.name
        'clip'
        """
        data = json.loads(text)
        rule = _stored_rule(data["tensor_rule"], tensor_rule)
        model = adapt(dst_def, "dst_def")
        x = _input_from(data["sample_input"])
        target = {tuple(k): _spec_from(s, d) for k, s, d in data["target"]}
        traced = model.trace(
            abstract_tree(model.own_variables()), x, data["call_kwargs"], "dst_def"
        )
        got = {k: v.shape for k, v in flat_variables(abstract_tree(traced.variables)).items()}
        if got != {k: v.shape for k, v in target.items()}:
            raise ValueError(
                "`dst_def` does not fit the saved plan: its variables differ from the "
                "planned target's. Pass the target definition the plan was made for."
            )
        return cls(
            report=_report_from(data["report"]),
            moves=tuple(_move_from(m) for m in data["moves"]),
            channel_groups=tuple(_group_from(g) for g in data["channel_groups"]),
            sources={tuple(k): _spec_from(s, d) for k, s, d in data["sources"]},
            target=target,
            checked=tuple(tuple(k) for k in data["checked"]),
            model=model,
            sample_input=x,
            call_kwargs=traced.kwargs,
            matcher=data["matcher"],
            rule=rule,
            on_nonfinite=data["on_nonfinite"],
            widened=tuple(_widened_from(w) for w in data.get("widened", ())),
            deepening=_deepening_from(data.get("deepening")),
        )


# ----------------------------------------------------------------------------------
# JSON helpers.


def _spec_json(x: jax.ShapeDtypeStruct) -> list:
    return [list(x.shape), jnp.dtype(x.dtype).name]


def _input_json(sample_input: ArrayTree) -> list:
    """The target input as JSON: ``[shape, dtype]`` for one array, ``{"inputs": [...]}``
    for several positional ones (an :class:`~dpiat_jax.Inputs` of arrays)."""
    if isinstance(sample_input, jax.ShapeDtypeStruct):
        return _spec_json(sample_input)
    if isinstance(sample_input, Inputs) and all(
        isinstance(a, jax.ShapeDtypeStruct) for a in sample_input.args
    ):
        return {"inputs": [_spec_json(a) for a in sample_input.args]}
    raise TypeError(
        "TransferPlan.to_json supports a target input that is one array or an Inputs "
        f"record of arrays, got {type(sample_input).__name__}."
    )


def _input_from(data: list | dict) -> ArrayTree:
    """The inverse of :func:`_input_json`."""
    if isinstance(data, dict):
        return Inputs(*(_spec_from(*spec) for spec in data["inputs"]))
    return _spec_from(*data)


def _spec_from(shape: list, dtype: str) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype))


def _report_json(report: MatchReport) -> dict:
    fields = [
        f.name for f in dataclasses.fields(report) if f.name not in ("src_blocks", "dst_blocks")
    ]
    return {name: getattr(report, name) for name in fields}


def _report_from(data: dict) -> MatchReport:
    data = dict(data)
    data["pairs"] = tuple((s, d, float(sc)) for s, d, sc in data["pairs"])
    data["skipped"] = tuple(tuple(x) for x in data["skipped"])
    data["unmatched_src"] = tuple(data["unmatched_src"])
    data["unmatched_dst"] = tuple(data["unmatched_dst"])
    data["fused"] = tuple(tuple(x) for x in data.get("fused", ()))
    data["factored"] = tuple(
        (name, axis, tuple(src), tuple(dst)) for name, axis, src, dst in data.get("factored", ())
    )
    if data.get("inferred_input") is not None:
        data["inferred_input"] = tuple(data["inferred_input"])
    return MatchReport(**data)


def _move_from(data: dict) -> TensorMove:
    data = dict(data)
    for name in ("dst", "src", "src_shape", "dst_shape", "moved_shape"):
        data[name] = tuple(data[name])
    if data["channel_axes"] is not None:
        data["channel_axes"] = tuple(data["channel_axes"])
    data["selections"] = tuple(tuple(x) for x in data["selections"])
    data["prefix_axes"] = tuple(data.get("prefix_axes", ()))
    for name in ("src_index", "dst_index", "parts"):
        if data.get(name) is not None:
            data[name] = tuple(data[name])
    data["broadcast"] = tuple(tuple(x) for x in data.get("broadcast", ()))
    return TensorMove(**data)


def _group_from(data: dict) -> ChannelGroup:
    return ChannelGroup(
        data["space"], data["src_size"], data["size"], tuple(tuple(m) for m in data["members"])
    )


def _widened_from(data: dict) -> WidenedSpace:
    return WidenedSpace(
        data["space"],
        data["src_size"],
        data["size"],
        tuple((int(i), int(axis), bool(c)) for i, axis, c in data["members"]),
        data["preserved"],
    )


def _deepening_from(data: dict | None) -> Deepening:
    if not data:
        return Deepening()
    identity = tuple(
        IdentityBlock(b["block"], b["source"], tuple(tuple(k) for k in b["zeroed"]))
        for b in data["identity"]
    )
    return Deepening(identity, tuple(tuple(k) for k in data["kept"]))


def _stored_rule(name: str, given: Any) -> TensorRule:
    if given is not None:
        rule = get_tensor_rule(given)
        if rule.name != name:
            raise ValueError(
                f"The plan was made with tensor_rule {name!r}, but tensor_rule={rule.name!r} "
                "was passed: pass the rule the plan was made with."
            )
        return rule
    if name in TENSOR_RULES:
        return TENSOR_RULES[name]
    raise ValueError(
        f"The plan was made with the user tensor rule {name!r}, which JSON stores by name "
        f"only: pass it again, TransferPlan.from_json(text, dst_def, tensor_rule={name})."
    )


# ----------------------------------------------------------------------------------
# Planning.


def _nonempty(tree: list, argname: str) -> None:
    if not any(not x.is_placeholder for x in tree_leaves(tree)):
        raise ValueError(
            f"`{argname}` has no layers with parameters: there is nothing to align. "
            "Check that the module creates parameters when called with this input."
        )


def _matcher_rng(rng: PRNGKey | None, options: Options) -> PRNGKey:
    rng = jax.random.key(0) if rng is None else rng
    if options.matcher_name == "random" and _is_traced(rng):
        raise ValueError(
            "matcher='random' draws its pairs while planning, which needs a concrete rng: "
            "make the plan outside jax.jit (dpiat_jax.plan(..., rng=key)) and call "
            "plan.apply inside."
        )
    return jax.random.fold_in(rng, 3)


def _target_graph(pairs: list[LayerPair], dst: Traced, model: Model, rule) -> ChannelGraph:
    """The target's channel graph: from its jaxpr, else from its matched layers' order."""
    graph = None
    if model.linen_module is not None:
        graph = target_channels(
            rule, model.linen_module, dst.variables, dst.sample_input, dst.kwargs
        )
    if graph is None:
        graph = call_order_channels([p.dst for p in pairs])
    return graph


def _channel_moves(
    moves: tuple[TensorMove, ...], pairs: list[LayerPair], dst: Traced, model: Model, rule
) -> tuple[tuple[TensorMove, ...], tuple[ChannelGroup, ...], tuple[WidenedSpace, ...]]:
    """Channel dimensions and selections for a channel-selecting rule, the widened
    spaces for a widening rule (else none)."""
    if rule.selects_channels:
        return (*plan_channels(moves, _target_graph(pairs, dst, model, rule)), ())
    if rule.widens_channels:
        return moves, (), plan_widening(moves, _target_graph(pairs, dst, model, rule))
    return moves, (), ()


def _deepening(
    pairs: list[LayerPair], dst_blocks: list, dst: Traced, model: Model, options: Options
) -> Deepening:
    """What ``deepen="identity"`` zeroes (nothing without it)."""
    if options.deepen != "identity":
        return Deepening()
    return plan_deepening(
        pairs, dst_blocks, model.linen_module, dst.variables, dst.sample_input, dst.kwargs
    )


@dataclasses.dataclass(frozen=True, eq=False)
class _ByIdentity:
    """An unhashable object as a cache key part: equal only to itself (the key keeps it
    alive, so its id is never reused while the entry exists)."""

    obj: Any

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ByIdentity) and other.obj is self.obj


def _hashable(obj: Any) -> Any:
    """``obj`` when it hashes by value, else :class:`_ByIdentity` of it."""
    try:
        hash(obj)
    except TypeError:
        return _ByIdentity(obj)
    return obj


class _ProgramCache:
    """The jitted apply programs of recent plans, by fingerprint (least recently used
    dropped first; a lock guards it, as plans may be applied in several threads)."""

    def __init__(self, size: int = 32) -> None:
        self._size = size
        self._lock = threading.Lock()
        self._programs: collections.OrderedDict = collections.OrderedDict()

    def get(self, key: tuple) -> Any:
        with self._lock:
            fn = self._programs.get(key)
            if fn is not None:
                self._programs.move_to_end(key)
            return fn

    def put(self, key: tuple, fn: Any) -> None:
        with self._lock:
            self._programs[key] = fn
            while len(self._programs) > self._size:
                self._programs.popitem(last=False)


_PROGRAMS = _ProgramCache()


def _fused_moves(
    moves: tuple[TensorMove, ...],
    pairs: list[LayerPair],
    src: Traced,
    dst: Traced,
    model: Model,
    src_model: Model | None,
    options: Options,
) -> tuple[TensorMove, ...]:
    """The moves with fused projections split into parts and attention heads kept whole
    (:mod:`dpiat_jax.structure`)."""
    source = None if src_model is None else (src, src_model)
    return structured_moves(moves, pairs, options.fused_rules, (dst, model), source)


def plan_traced(
    src: Traced,
    dst: Traced,
    model: Model,
    options: Options,
    rng: PRNGKey | None = None,
    src_model: Model | None = None,
) -> TransferPlan:
    """Plans a transfer between two traced models (the stages after tracing).

    Args:
      src: the traced source (its layers may hold abstract tensors).
      dst: the traced target (abstract tensors: its variables are the fresh init's
        shapes).
      model: the target's adapter.
      options: the validated options.
      rng: randomness for the random matcher (``fold_in(rng, 3)``).
      src_model: the source's adapter: a projection found fused in the target moves
        part by part only when the source's forward pass splits it alike (None: the
        target's finding is trusted).

    Returns:
      The :class:`TransferPlan`.

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> from dpiat_jax.trace.adapter import adapt
    >>> x = jnp.zeros((1, 3))
    >>> src = adapt(nn.Dense(2), "src_def").trace(None, x, {}, "src_def")
    >>> dst_model = adapt(nn.Dense(4), "dst_def")
    >>> dst = dst_model.trace(None, x, {}, "dst_def")
    >>> plan_traced(src, dst, dst_model, Options()).report.pairs
    (('<root>', '<root>', 0.5),)
    """
    src_blocks, dst_blocks = blocks(src.root), blocks(dst.root)
    _nonempty(src_blocks, "src_def")
    _nonempty(dst_blocks, "dst_def")
    src_spec, dst_spec = to_spec_tree(src_blocks), to_spec_tree(dst_blocks)
    if options.rule.widen is not None:  # growth: layers correspond in order, not by width
        src_spec, dst_spec = width_free(src_spec), width_free(dst_spec)
    # The alignment runs on the host; inside a user's jit it must not be staged out.
    with jax.ensure_compile_time_eval():
        result = align(src_spec, dst_spec, options.matcher, rng=_matcher_rng(rng, options))
        sim = alignment_similarity(result, dst_spec, options.matcher_name)
    pairs = layer_pairs(result, src_blocks, dst_blocks)
    moves, skipped = plan_moves(pairs)
    moves = _fused_moves(moves, pairs, src, dst, model, src_model, options)
    moves, groups, widened = _channel_moves(moves, pairs, dst, model, options.rule)
    deepening = _deepening(pairs, dst_blocks, dst, model, options)
    report = build_report(
        pairs,
        src_blocks,
        dst_blocks,
        written=written_scalars(widened_moves(moves, widened)),
        skipped=skipped,
        score=result.score,
        similarity=sim,
        matcher=options.matcher_name,
        tensor_rule=options.rule.name,
        inferred_input=None if src.inferred is None else src.inferred.shape,
    )
    fused = tuple(("/".join(m.dst), *m.parts) for m in moves if m.parts is not None)
    factored = tuple(("/".join(m.dst), a, s, d) for m in moves for a, s, d in m.factors)
    report = dataclasses.replace(
        report, fused=tuple(dict.fromkeys(fused)), factored=tuple(dict.fromkeys(factored))
    )
    checked = checked_tensors(pairs)
    src_flat = flat_variables(src.variables)
    read = dict.fromkeys([*(m.src for m in moves), *checked])
    return TransferPlan(
        report=report,
        moves=moves,
        channel_groups=groups,
        sources={k: _spec(src_flat[k]) for k in read},
        target={k: _spec(v) for k, v in flat_variables(dst.variables).items()},
        checked=checked,
        model=model,
        sample_input=dst.sample_input,
        call_kwargs=dst.kwargs,
        matcher=options.matcher_name,
        rule=options.rule,
        on_nonfinite=options.on_nonfinite,
        widened=widened,
        deepening=deepening,
    )


def build_plan(
    src_def: Any,
    dst_def: Any,
    src_variables: Any,
    sample_input: Any,
    call_kwargs: Any,
    options: Options,
    rng: PRNGKey | None = None,
    src_argname: str = "src_variables",
) -> TransferPlan:
    """:func:`plan` with validated options and the source argument's name for errors
    (``transfer`` calls its source ``src_params``).

    Args:
      src_def, dst_def, src_variables, sample_input, call_kwargs, rng: as for
        :func:`plan`.
      options: the validated :class:`~dpiat_jax.options.Options`.
      src_argname: the name errors give the source variables.

    Returns:
      The :class:`TransferPlan`.

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> build_plan(nn.Dense(2), nn.Dense(4), None, jnp.zeros((1, 3)), None, Options()).matcher
    'dp'
    """
    src_in, dst_in = split_inputs(sample_input)
    src_kw, dst_kw = split_kwargs(call_kwargs)
    src_model = adapt(src_def, "src_def")
    if src_variables is not None:
        variables = as_variables(src_variables, src_argname)[0]
    else:
        variables = src_model.own_variables()
    variables = None if variables is None else abstract_tree(variables)
    argname = "src_def" if variables is None else src_argname
    src = src_model.trace(variables, src_in, src_kw, argname)
    dst_model = adapt(dst_def, "dst_def")
    dst_vars = dst_model.own_variables()
    dst_vars = None if dst_vars is None else abstract_tree(dst_vars)
    dst = trace_target(dst_model, dst_vars, src, dst_in, dst_kw)
    the_plan = plan_traced(src, dst, dst_model, options, rng, src_model)
    warn_low_coverage(the_plan.report, stacklevel=3)
    warn_kept(the_plan.deepening, stacklevel=3)
    return the_plan


def plan(
    src_def: Any,
    dst_def: Any,
    *,
    src_variables: Any = None,
    sample_input: Any = None,
    call_kwargs: Mapping[str, Any] | tuple | None = None,
    matcher: str | Matcher = "dp",
    tensor_rule: str | TensorRule | TensorFn = "clip",
    on_nonfinite: str = "warn",
    fused: Mapping[str, int | tuple[int, int]] | None = None,
    rng: PRNGKey | None = None,
    deepen: str | None = None,
) -> TransferPlan:
    """Plans the transfer from ``src_def`` to ``dst_def`` from shapes alone.

    Args:
      src_def: the source's linen module, or an NNX model (its own variables).
      dst_def: the target's linen module, or an NNX model (its own state is the fresh
        init).
      src_variables: the source's variables as arrays or ``jax.ShapeDtypeStruct``
        leaves (a variables dict or only its params); used to infer an input and checked
        against ``src_def``. Without them ``sample_input`` is needed (for linen).
      sample_input: one example batch for both models, or a ``(src_input, dst_input)``
        pair (arrays or ``jax.ShapeDtypeStruct``); inferred from ``src_variables`` when
        None, and the source's is used for the target.
      call_kwargs: keyword arguments for both ``__call__`` (e.g. ``{"train": False}``) or
        a ``(src_kwargs, dst_kwargs)`` pair; a required ``train``/``deterministic`` flag
        left out is set to inference mode.
      matcher: a name in ``dpiat_jax.matchers.MATCHERS`` or a function
        ``(src_tree, dst_tree, rng=None) -> Alignment``.
      tensor_rule: a name in ``dpiat_jax.tensors.TENSOR_RULES``, a
        :class:`~dpiat_jax.tensors.TensorRule` or a function ``(src, dst, rng) -> array``;
        ``"net2net"`` widens with Net2Net's function-preserving copies
        (:mod:`dpiat_jax.widening`).
      on_nonfinite: what :meth:`TransferPlan.apply` does with NaN/inf in a copied source
        tensor: ``"warn"``, ``"raise"`` or ``"ignore"``.
      fused: fused projections the forward pass does not reveal: layer-name pattern
        (``fnmatch``) -> part count, or ``(count, axis)`` (:mod:`dpiat_jax.fused`).
        Splits of a projection's output in the target's forward pass (``jnp.split``,
        equal slices) are found without it.
      rng: randomness for the ``random`` matcher (others ignore it).
      deepen: None, or ``"identity"``: where one source block seeds a run of target
        blocks, the first block of the run takes the source values and the later ones
        start as identities (their residual branch's last layer zero;
        :mod:`dpiat_jax.deepening`).

    Returns:
      The :class:`TransferPlan`; ``str(plan)`` is its report's table.

    Raises:
      TypeError: a definition that is not a Flax module, or malformed arguments.
      ValueError: unknown options (naming the argument and the valid values), an input
        that does not run, variables that do not fit ``src_def``, or a model without
        layers.

    >>> import flax.linen as nn
    >>> import jax.numpy as jnp
    >>> src = {"params": {"kernel": jax.ShapeDtypeStruct((3, 2), jnp.float32),
    ...                   "bias": jax.ShapeDtypeStruct((2,), jnp.float32)}}
    >>> p = plan(nn.Dense(2), nn.Dense(4), src_variables=src, sample_input=jnp.zeros((1, 3)))
    >>> [(m.src[-1], m.src_shape, m.dst_shape) for m in p.moves]
    [('bias', (2,), (4,)), ('kernel', (3, 2), (3, 4))]
    """
    options = Options(matcher, tensor_rule, on_nonfinite, fused, deepen)
    rng = as_key(rng)
    return build_plan(src_def, dst_def, src_variables, sample_input, call_kwargs, options, rng)
