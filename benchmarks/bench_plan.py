"""The transfer plan: ``plan`` time, and warm ``jax.jit(plan.apply)`` against the target's
jitted init and against a device copy of the target's bytes; peak memory.

    python benchmarks/bench_plan.py [--quick] [--out benchmarks/results]

For every pair the source is planned from shapes (``jax.eval_shape``), materialised with
zeros, and then:

* ``plan s``: one ``dpiat_jax.plan`` call from the source's ``jax.ShapeDtypeStruct``
  variables (the first in the process: it traces both models);
* ``apply ms``: the median warm call of ``jax.jit(plan.apply)`` (fresh init of the target
  and every planned move, one compiled program);
* ``init ms``: the median warm call of ``jax.jit(dst_def.init)`` (the same rng);
* ``copy ms``: the median warm call of a jitted copy of the target's arrays (the physical
  floor: every target byte written once);
* ``peak / (src+dst)``: in a fresh process, the peak resident set size during one warm
  apply above the level just before it (source in memory), sampled every millisecond,
  divided by the bytes of source and target;
* ``init peak / (src+dst)``: the same for one warm ``jax.jit(dst_def.init)`` alone (what
  the target's own init needs: its random bits and the float temporaries).

Targets (issue 11): apply within 1.5x of the jitted init and within 3x of the copy
floor; plan of the ~300M-parameter decoder under 2 s; peak within 2.5x of source +
target bytes. ``--quick`` runs the two small pairs (under a minute).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

from common import PEAK_SAMPLER, machine, median_time, ms, once, run_child, table

HERE = os.path.dirname(os.path.abspath(__file__))


def _models():
    """The scan-layered transformer and the GPT-style decoder (imported lazily)."""
    import flax.linen as nn
    import jax.numpy as jnp

    class Block(nn.Module):
        """A pre-norm transformer block (attention written with Dense layers)."""

        d: int
        heads: int
        dtype: object = jnp.float32

        @nn.compact
        def __call__(self, x, _=None):
            kw = {"dtype": self.dtype, "param_dtype": self.dtype}
            h = nn.LayerNorm(**kw, name="ln1")(x)
            q, k, v = (nn.Dense(self.d, **kw, name=n)(h) for n in ("q", "k", "v"))
            b, t, _ = x.shape
            split = lambda a: a.reshape(b, t, self.heads, self.d // self.heads)  # noqa: E731
            att = jnp.einsum("bqhd,bkhd->bhqk", split(q), split(k)) / (self.d // self.heads) ** 0.5
            att = jnp.where(jnp.tril(jnp.ones((t, t), bool)), att, -1e9)
            h = jnp.einsum("bhqk,bkhd->bqhd", nn.softmax(att), split(v)).reshape(b, t, self.d)
            x = x + nn.Dense(self.d, **kw, name="o")(h)
            h = nn.LayerNorm(**kw, name="ln2")(x)
            h = nn.Dense(4 * self.d, **kw, name="up")(h)
            return x + nn.Dense(self.d, **kw, name="down")(nn.gelu(h)), None

    class ScanTransformer(nn.Module):
        """Layers stacked with ``nn.scan`` (one set of parameters with a layer axis)."""

        depth: int
        d: int = 64
        vocab: int = 256

        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(self.vocab, self.d, name="embed")(tokens)
            layers = nn.scan(
                Block,
                variable_axes={"params": 0},
                split_rngs={"params": True},
                length=self.depth,
            )(self.d, 4, name="layers")
            x, _ = layers(x, None)
            return nn.Dense(self.vocab, name="head")(nn.LayerNorm(name="ln")(x))

    class GPT(nn.Module):
        """A GPT-style decoder in bfloat16, its blocks unrolled."""

        depth: int
        d: int
        vocab: int = 32000

        @nn.compact
        def __call__(self, tokens):
            kw = {"dtype": jnp.bfloat16, "param_dtype": jnp.bfloat16}
            x = nn.Embed(self.vocab, self.d, **kw, name="wte")(tokens)
            pos = self.param("wpe", nn.initializers.normal(0.02), (1024, self.d), jnp.bfloat16)
            x = x + pos[None, : tokens.shape[1]]
            for i in range(self.depth):
                x, _ = Block(self.d, self.d // 64, jnp.bfloat16, name=f"h{i}")(x)
            x = nn.LayerNorm(**kw, name="ln_f")(x)
            return nn.Dense(self.vocab, use_bias=False, **kw, name="lm_head")(x)

    return ScanTransformer, GPT


def build_case(name: str):
    """``(src_def, dst_def, sample_input)`` of a benchmark pair."""
    import jax.numpy as jnp

    from dpiat_jax.models import get_model

    scan, gpt = _models()
    image = jnp.zeros((1, 64, 64, 3))
    tokens = jnp.zeros((1, 16), jnp.int32)
    cases: dict[str, Callable] = {
        "resnet18 -> resnet34": lambda: (get_model("resnet18"), get_model("resnet34"), image),
        "resnet50 -> resnet152": lambda: (get_model("resnet50"), get_model("resnet152"), image),
        "scan transformer 4 -> 8": lambda: (scan(4), scan(8), tokens),
        "GPT 110M -> 335M (bf16)": lambda: (gpt(12, 768), gpt(24, 1024), tokens),
    }
    return cases[name]()


QUICK = ["resnet18 -> resnet34", "scan transformer 4 -> 8"]
FULL = [*QUICK, "resnet50 -> resnet152", "GPT 110M -> 335M (bf16)"]

MEMORY_CHILD = (
    PEAK_SAMPLER
    + f"""
import sys
sys.path.insert(0, {HERE!r})
import jax.numpy as jnp
import dpiat_jax
from bench_plan import build_case

src_def, dst_def, x = build_case(PAYLOAD)
abstract = jax.eval_shape(src_def.init, jax.random.key(0), x)
variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
nbytes = lambda t: sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(t))
plan = dpiat_jax.plan(src_def, dst_def, src_variables=abstract, sample_input=x)
apply = jax.jit(plan.apply)
out = jax.block_until_ready(apply(variables, jax.random.key(1)))  # compiled here
dst_bytes = nbytes(out)
del out
init = jax.jit(dst_def.init)
jax.block_until_ready(init(jax.random.key(1), x))  # compiled here

apply_peak = peak_of(lambda: apply(variables, jax.random.key(2)))
init_peak = peak_of(lambda: init(jax.random.key(2), x))
RESULT = {{"peak": apply_peak, "init_peak": init_peak, "src": nbytes(variables), "dst": dst_bytes}}
"""
)


def measure(name: str) -> list:
    """One table row: times in this process, memory in a fresh one."""
    import jax
    import jax.numpy as jnp

    import dpiat_jax

    src_def, dst_def, x = build_case(name)
    abstract = jax.eval_shape(src_def.init, jax.random.key(0), x)
    t_plan, plan = once(
        lambda: dpiat_jax.plan(src_def, dst_def, src_variables=abstract, sample_input=x)
    )
    variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), abstract)
    rng = jax.random.key(1)
    apply = jax.jit(plan.apply)
    init = jax.jit(dst_def.init)
    copy = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
    out = jax.block_until_ready(apply(variables, rng))
    jax.block_until_ready(init(rng, x))
    jax.block_until_ready(copy(out))
    t_apply = median_time(lambda: jax.block_until_ready(apply(variables, rng)))
    t_init = median_time(lambda: jax.block_until_ready(init(rng, x)))
    t_copy = median_time(lambda tree=out: jax.block_until_ready(copy(tree)))
    n_params = sum(a.size for a in jax.tree.leaves(out))
    mem = run_child(MEMORY_CHILD, name)
    total = mem["src"] + mem["dst"]
    return [
        name,
        f"{n_params / 1e6:.1f}M",
        f"{total / 2**20:.0f}",
        t_plan,
        ms(t_apply),
        ms(t_init),
        ms(t_copy),
        t_apply / t_init,
        t_apply / t_copy,
        mem["peak"] / total,
        mem["init_peak"] / total,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two small pairs only")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    headers = [
        "pair",
        "dst params",
        "src+dst MiB",
        "plan s",
        "apply ms",
        "jit init ms",
        "copy ms",
        "apply / init",
        "apply / copy",
        "peak / (src+dst)",
        "init peak / (src+dst)",
    ]
    rows = []
    print("\n".join(table(headers, []).splitlines()[:2]), flush=True)
    for name in QUICK if args.quick else FULL:
        rows.append(measure(name))
        # Each row as it finishes: a run cut short by a time limit still reports.
        print(table(headers, rows[-1:]).splitlines()[-1], flush=True)
    report = "\n\n".join(
        [
            f"Machine: {machine()}",
            "### plan and jax.jit(plan.apply) against jax.jit(dst_def.init) and a copy\n\n"
            + table(headers, rows),
            f"Total benchmark time: {time.time() - start:.0f} s",
        ]
    )
    print(report)
    name = "plan_quick.md" if args.quick else "plan.md"
    with open(os.path.join(args.out, name), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
