"""Scale: transfer and alignment on models of thousands of layers; time and peak memory.

    python benchmarks/bench_scale.py [--layers 4000] [--quick] [--out benchmarks/results]

Stages, each timed on its first call in this process and on a second call, each call with
its peak resident memory (RSS, sampled every 2 ms in a thread from /proc/self/statm) over
the RSS before it:

- ``transfer``: :func:`dpiat_jax.transfer` between two :func:`dpiat_jax.testing.deep_model`
  networks (stages of identical blocks of Dense/LayerNorm pairs) of about ``--layers`` and
  ``1.25 * --layers`` layers; its first call includes the target's eager init.
- ``module_blocks + align``: the layers and blocks of both models and their alignment,
  without the tensors. (Under the default kernel policy a small alignment runs in NumPy
  the first time its shapes are met and is compiled the second time.)
- ``align (repeated blocks)``: two spec trees of about ``--layers`` leaves built like
  networks (``tests/strategies.random_tree``: repeated blocks, as real models have).
- ``align (distinct blocks)``: spec trees of ``--layers`` leaves in blocks of 16 whose
  shapes all differ: no block is solved once for several positions, the worst case for
  the batched kernel's memory (every block pair of a depth is one padded array).

The variables' bytes (source + target) are printed for comparison with the peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from common import count_leaves, machine, table
from flax import traverse_util
from strategies import random_tree  # tests/ is on the path (see common.py)

import dpiat_jax
from dpiat_jax import matchers, testing
from dpiat_jax.spec import LayerSpec

PAGE = os.sysconf("SC_PAGE_SIZE")
MB = 1024.0 * 1024.0


def rss_bytes() -> int:
    """The current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class PeakRss:
    """Samples RSS in a background thread while the ``with`` body runs."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self.base = 0
        self._stop = threading.Event()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        gc.collect()
        self.base = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.base) / MB


def measure(fn: Callable[[], Any]) -> tuple[float, float, float, float, Any]:
    """(first call s, second call s, peak RSS increase MB of each call, result)."""
    with PeakRss() as rss1:
        t = time.perf_counter()
        out = fn()
        first = time.perf_counter() - t
    with PeakRss() as rss2:
        t = time.perf_counter()
        fn()
        second = time.perf_counter() - t
    return first, second, rss1.delta_mb, rss2.delta_mb, out


def nbytes(tree: Any) -> int:
    return sum(int(np.prod(x.shape)) * x.dtype.itemsize for x in jax.tree_util.tree_leaves(tree))


def count_layers(variables: Any) -> int:
    """Layers with a kernel or a scale."""
    keys = traverse_util.flatten_dict(variables["params"])
    return sum(1 for k in keys if k[-1] in ("kernel", "scale"))


def distinct_tree(rng: np.random.Generator, leaves: int, block: int = 16) -> list:
    """``leaves`` leaves in blocks of ``block``; every block has its own shapes."""
    tree = []
    for _ in range(max(1, leaves // block)):
        body = []
        for j in range(block):
            c1, c2 = (int(c) for c in rng.integers(4, 257, size=2))
            if j % 2:
                body.append(LayerSpec("batch_norm", (c2,)))
            else:
                body.append(LayerSpec("conv2d", (3, 3, c1, c2)))
        tree.append(body)
    return tree


def model_rows(n: int) -> tuple[list[list], float, int]:
    """Transfer, and blocks + alignment, between two deep models of about ``n`` layers.

    Returns the table rows, the source + target variables in MB and the pairs matched.
    """
    src, x = testing.deep_model(n, stages=8, layers_per_block=5, rng=1)
    dst, _ = testing.deep_model(int(n * 1.25), stages=8, layers_per_block=5, rng=2)
    src_vars = testing.random_variables(src, x, 3)
    dst_abstract = jax.eval_shape(dst.init, jax.random.key(0), x)
    var_mb = (nbytes(src_vars) + nbytes(dst_abstract)) / MB
    rng = jax.random.key(4, impl="rbg")
    sizes = f"{count_layers(src_vars)} / {count_layers(dst_abstract)}"

    first, second, peak, peak2, out = measure(
        lambda: dpiat_jax.transfer(src_vars, src, dst, rng, sample_input=x)
    )
    assert jax.tree_util.tree_structure(out) == jax.tree_util.tree_structure(dst_abstract)
    rows = [["transfer", sizes, var_mb, first, second, peak, peak2]]

    def blocks_and_align():
        a = dpiat_jax.to_spec_tree(dpiat_jax.module_blocks(src, src_vars, sample_input=x))
        b = dpiat_jax.to_spec_tree(dpiat_jax.module_blocks(dst, sample_input=x))
        return matchers.align(a, b)

    first, second, peak, peak2, result = measure(blocks_and_align)
    rows.append(["module_blocks + align", sizes, float("nan"), first, second, peak, peak2])
    return rows, var_mb, len(result.pairs)


def spec_tree_rows(n: int) -> list[list]:
    """Alignment only, on spec trees of about ``n`` leaves: repeated, then distinct blocks."""
    r = np.random.default_rng(5)
    rows = []
    for name, build in [
        ("align (repeated blocks)", random_tree),
        ("align (distinct blocks)", distinct_tree),
    ]:
        a, b = build(r, n), build(r, int(n * 1.25))
        first, second, peak, peak2, _ = measure(lambda a=a, b=b: matchers.align(a, b))
        sizes = f"{count_leaves(a)} / {count_leaves(b)}"
        rows.append([name, sizes, float("nan"), first, second, peak, peak2])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layers", type=int, default=4000, help="layers of the source")
    parser.add_argument("--quick", action="store_true", help="1000 layers")
    parser.add_argument("--out", default=None, help="also write OUT/scale.md")
    args = parser.parse_args()
    n = 1000 if args.quick else args.layers
    print(machine())
    print(f"RSS at start: {rss_bytes() / MB:.0f} MB")
    rows, var_mb, pairs_transfer = model_rows(n)
    rows += spec_tree_rows(n)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    headers = [
        "stage",
        "layers src / dst",
        "variables MB",
        "first s",
        "second s",
        "peak RSS +MB (first)",
        "(second)",
    ]
    text = "\n".join(
        [
            table(headers, rows),
            "",
            f"transfer matched {pairs_transfer} layer pairs; source + target variables "
            f"{var_mb:.1f} MB; process peak RSS (ru_maxrss) {usage.ru_maxrss / 1024:.0f} MB; "
            f"CPU {usage.ru_utime + usage.ru_stime:.0f} s.",
        ]
    )
    print(text)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "scale.md"), "w") as f:
            f.write(f"{machine()}\n\n{text}\n")


if __name__ == "__main__":
    main()
