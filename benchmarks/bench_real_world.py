"""Real-world model patterns: ``match`` and ``transfer`` first in a process and warm.

    python benchmarks/bench_real_world.py [--out benchmarks/results]

Every pair runs in a fresh Python process (imports not counted): the first ``match`` and
the first ``transfer`` of the process (tracing, alignment and the compile of the
transfer's program included), then the median of five warm calls of each (the same
architectures again, as a user who transfers into several targets or repeats an
experiment). Pairs: a transformer written with ``nn.scan`` (4 -> 8 layers, d=64), a
model of ``nn.remat`` blocks (2 -> 4), a GPT-2-style decoder with a fused ``c_attn``
(2 -> 4 layers), an NNX model with ``nnx.scan`` layers (4 -> 8), and, when
``transformers`` is installed, Hugging Face Flax GPT-2 and BERT built from tiny configs
(2 -> 4 layers).

Targets (issue 12): under 0.5 s warm and under 2 s first in a process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from common import machine, run_child, table

HERE = os.path.dirname(os.path.abspath(__file__))

CASES = [
    "scan transformer 4 -> 8 (linen)",
    "remat blocks 2 -> 4",
    "GPT-2 style fused c_attn 2 -> 4",
    "nnx.scan 4 -> 8",
    "HF Flax GPT-2 2 -> 4 layers",
    "HF Flax BERT 2 -> 4 layers",
]

CHILD = f"""
import statistics, sys, time
sys.path.insert(0, {HERE!r})
import jax
import dpiat_jax
from bench_real_world import build_case

src, src_vars, dst, x, kwargs = build_case(PAYLOAD)
rng = jax.random.key(1)

def run_match():
    return dpiat_jax.match(src_vars, src, dst, sample_input=x, call_kwargs=kwargs)

def run_transfer():
    out = dpiat_jax.transfer(src_vars, src, dst, rng, sample_input=x, call_kwargs=kwargs)
    return jax.block_until_ready(out)

def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t

first_match = timed(run_match)
first_transfer = timed(run_transfer)
warm_match = statistics.median(timed(run_match) for _ in range(5))
warm_transfer = statistics.median(timed(run_transfer) for _ in range(5))
report = run_match()
RESULT = [first_match, first_transfer, warm_match, warm_transfer,
          report.layers_transferred, report.layers_total]
"""


def _linen_cases(name: str):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    from bench_plan import build_case as plan_case

    tokens = jnp.zeros((1, 16), jnp.int32)
    if name == "scan transformer 4 -> 8 (linen)":
        src, dst, x = plan_case("scan transformer 4 -> 8")
        return src, src.init(jax.random.key(0), x), dst, x, None

    class Block(nn.Module):
        d: int

        @nn.compact
        def __call__(self, x):
            q, k, v = jnp.split(nn.Dense(3 * self.d, name="c_attn")(nn.LayerNorm()(x)), 3, -1)
            att = nn.softmax(jnp.einsum("btd,bsd->bts", q, k) / self.d**0.5)
            x = x + nn.Dense(self.d, name="c_proj")(jnp.einsum("bts,bsd->btd", att, v))
            h = nn.gelu(nn.Dense(4 * self.d, name="c_fc")(nn.LayerNorm()(x)))
            return x + nn.Dense(self.d, name="mlp_proj")(h)

    class Decoder(nn.Module):
        depth: int
        remat: bool = False
        d: int = 64

        @nn.compact
        def __call__(self, tokens):
            x = nn.Embed(256, self.d, name="wte")(tokens)
            block = nn.remat(Block) if self.remat else Block
            for i in range(self.depth):
                x = block(self.d, name=f"h_{i}")(x)
            return nn.Dense(256, name="head")(nn.LayerNorm()(x))

    remat = name.startswith("remat")
    src, dst = Decoder(2, remat), Decoder(4, remat)
    return src, src.init(jax.random.key(0), tokens), dst, tokens, None


def _nnx_case():
    import jax.numpy as jnp
    from flax import nnx

    class Block(nnx.Module):
        def __init__(self, d: int, rngs: nnx.Rngs):
            self.ln = nnx.LayerNorm(d, rngs=rngs)
            self.up = nnx.Linear(d, 4 * d, rngs=rngs)
            self.down = nnx.Linear(4 * d, d, rngs=rngs)

        def __call__(self, x):
            return x + self.down(nnx.gelu(self.up(self.ln(x))))

    class Model(nnx.Module):
        def __init__(self, n: int, rngs: nnx.Rngs, d: int = 64):
            self.inp = nnx.Linear(16, d, rngs=rngs)

            @nnx.split_rngs(splits=n)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(rngs):
                return Block(d, rngs)

            self.layers = create(rngs)
            self.head = nnx.Linear(d, 10, rngs=rngs)

        def __call__(self, x):
            @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry)
            def step(x, block):
                return block(x)

            return self.head(step(self.inp(x), self.layers))

    return Model(4, nnx.Rngs(0)), None, Model(8, nnx.Rngs(1)), jnp.zeros((2, 16)), None


def _hf_case(name: str):
    import jax.numpy as jnp
    import transformers as tf

    import dpiat_jax

    ids = jnp.ones((1, 16), jnp.int32)
    mask = jnp.ones((1, 16), jnp.int32)
    if "GPT-2" in name:

        def make(layers: int):
            config = tf.GPT2Config(
                n_layer=layers, n_embd=64, n_head=4, vocab_size=512, n_positions=64
            )
            return tf.FlaxGPT2LMHeadModel(config, seed=layers)

        inputs = dpiat_jax.Inputs(ids, mask, jnp.arange(16)[None])
    else:

        def make(layers: int):
            config = tf.BertConfig(
                num_hidden_layers=layers,
                hidden_size=64,
                num_attention_heads=4,
                intermediate_size=128,
                vocab_size=512,
                max_position_embeddings=64,
            )
            return tf.FlaxBertModel(config, seed=layers)

        inputs = dpiat_jax.Inputs(ids, mask, jnp.zeros_like(ids), jnp.arange(16)[None])
    src, dst = make(2), make(4)
    return src.module, {"params": src.params}, dst.module, inputs, {"deterministic": True}


def build_case(name: str):
    """``(src_def, src_variables, dst_def, sample_input, call_kwargs)`` of a pair."""
    if name.startswith("HF"):
        return _hf_case(name)
    if name.startswith("nnx"):
        return _nnx_case()
    return _linen_cases(name)


def _available(name: str) -> bool:
    if not name.startswith("HF"):
        return True
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    rows = []
    for name in CASES:
        if not _available(name):
            print(f"skipped (transformers not installed): {name}")
            continue
        first_m, first_t, warm_m, warm_t, seeded, total = run_child(CHILD, name)
        rows.append([name, first_m, first_t, warm_m, warm_t, f"{seeded}/{total}"])
        print(rows[-1], flush=True)
    headers = [
        "pair",
        "first match s",
        "first transfer s",
        "warm match s",
        "warm transfer s",
        "target layers seeded",
    ]
    report = "\n\n".join(
        [
            f"Machine: {machine()}",
            "### match and transfer on real-world model patterns (fresh process per pair)\n\n"
            + table(headers, rows),
            f"Total benchmark time: {time.time() - start:.0f} s",
        ]
    )
    print(report)
    with open(os.path.join(args.out, "real_world.md"), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
