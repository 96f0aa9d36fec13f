"""End-to-end transfer: ``transfer()`` wall time against the target's own ``init``, and
peak memory against the bytes of source plus target variables.

    python benchmarks/bench_transfer.py [--quick] [--out benchmarks/results]

Times are medians of warm calls in one process (both functions already ran once on the
same shapes, so neither pays for first-time op compilation). Memory is measured in a
fresh process per pair: the peak resident set size during one ``transfer`` call above
the level just before it (source variables already in memory), sampled every
millisecond, divided by the bytes of the source and target variables (after one warm-up
transfer in that process, so JAX's one-time op compilation is not counted).
"""

from __future__ import annotations

import argparse
import os
import time

from common import PEAK_SAMPLER, machine, median_time, run_child, table

PAIRS = [
    ("cifar_resnet20", "cifar_resnet32", 32),
    ("cifar_resnet32", "cifar_resnet20_w2", 32),
    ("resnet18", "resnet34", 64),
    ("resnet50", "resnet101", 64),
    ("mobilenet_v2", "efficientnet_b0", 64),
    ("efficientnet_b0", "efficientnet_b2", 64),
]

MEMORY_CHILD = (
    PEAK_SAMPLER
    + """
import jax.numpy as jnp
import dpiat_jax
from dpiat_jax.models import get_model

src_name, dst_name, size = PAYLOAD
src, dst = get_model(src_name), get_model(dst_name)
x = jnp.zeros((1, size, size, 3))
variables = src.init(jax.random.key(0), x)
nbytes = lambda t: sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(t))
dst_bytes = nbytes(jax.eval_shape(dst.init, jax.random.key(1), x))
# One warm-up transfer, so that JAX's one-time compilation of the eager ops (memory
# that any first init pays) is not counted against the transfer.
jax.block_until_ready(dpiat_jax.transfer(variables, src, dst, jax.random.key(2), sample_input=x))
peak = peak_of(lambda: dpiat_jax.transfer(variables, src, dst, jax.random.key(1), sample_input=x))
RESULT = {"peak": peak, "src": nbytes(variables), "dst": dst_bytes}
"""
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the two smallest pairs only")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    start = time.time()

    import jax
    import jax.numpy as jnp

    import dpiat_jax
    from dpiat_jax.models import get_model

    rows = []
    for src_name, dst_name, size in PAIRS[:2] if args.quick else PAIRS:
        src, dst = get_model(src_name), get_model(dst_name)
        x = jnp.zeros((1, size, size, 3))
        variables = src.init(jax.random.key(0), x)

        def init(dst=dst, x=x):
            return jax.block_until_ready(dst.init(jax.random.key(1), x))

        def run(src=src, dst=dst, variables=variables, x=x):
            return jax.block_until_ready(
                dpiat_jax.transfer(variables, src, dst, jax.random.key(1), sample_input=x)
            )

        init(), run()
        t_init, t_transfer = median_time(init, 3), median_time(run, 3)
        mem = run_child(MEMORY_CHILD, (src_name, dst_name, size))
        total = mem["src"] + mem["dst"]
        rows.append(
            [
                f"{src_name} -> {dst_name}",
                f"{size}x{size}",
                f"{total / 2**20:.1f}",
                t_init,
                t_transfer,
                t_transfer / t_init,
                f"{mem['peak'] / 2**20:.1f}",
                mem["peak"] / total,
            ]
        )
    headers = [
        "pair",
        "input",
        "src+dst MiB",
        "dst init s",
        "transfer s",
        "transfer / init",
        "peak extra MiB",
        "peak / (src+dst)",
    ]
    report = "\n\n".join(
        [
            f"Machine: {machine()}",
            "### transfer() against the target's init, and its peak memory\n\n"
            + table(headers, rows),
            f"Total benchmark time: {time.time() - start:.0f} s",
        ]
    )
    print(report)
    with open(os.path.join(args.out, "transfer.md"), "w") as f:
        f.write(report + "\n")


if __name__ == "__main__":
    main()
