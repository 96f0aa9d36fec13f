"""Thread safety: transfer, match and similarity called from several threads at once.

Each test runs different pairs (linen and NNX models) first one after the other, then
all at once from as many threads (started together at a barrier), and asks for the same
results. The NNX tracer records calls without patching any class (a recording subclass
on a private copy, a context-local recorder), so concurrent traces cannot see each
other's calls.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import dpiat_jax

X = jnp.ones((1, 8, 8, 3))


class LinenCnn(nn.Module):
    width: int
    depth: int

    @nn.compact
    def __call__(self, x):
        for i in range(self.depth):
            x = nn.relu(nn.Conv(self.width, (3, 3), name=f"conv{i}")(x))
        return nn.Dense(5, name="head")(x.mean((1, 2)))


class NnxCnn(nnx.Module):
    def __init__(self, width: int, depth: int, rngs: nnx.Rngs):
        # Defined in another order than called: a shared recorder would mix the orders.
        self.head = nnx.Linear(width, 5, rngs=rngs)
        widths = [3] + [width] * depth
        self.convs = nnx.List(
            [nnx.Conv(a, b, (3, 3), rngs=rngs) for a, b in zip(widths, widths[1:])]
        )

    def __call__(self, x):
        for conv in self.convs:
            x = nnx.relu(conv(x))
        return self.head(x.mean((1, 2)))


LINEN_PAIRS = [((4, 1), (8, 2)), ((8, 2), (4, 3)), ((6, 3), (6, 1)), ((8, 1), (16, 2))]
NNX_PAIRS = [((4, 2), (8, 1)), ((8, 1), (4, 2)), ((6, 2), (12, 3)), ((16, 3), (8, 2))]


def _linen_jobs() -> list[tuple]:
    jobs = []
    for i, ((sw, sd), (dw, dd)) in enumerate(LINEN_PAIRS):
        src, dst = LinenCnn(sw, sd), LinenCnn(dw, dd)
        variables = src.init(jax.random.key(i), X)
        # Every other pair infers its input: inference runs concurrently too.
        jobs.append((variables, src, dst, X if i % 2 else None))
    return jobs


def _nnx_jobs() -> list[tuple]:
    jobs = []
    for i, ((sw, sd), (dw, dd)) in enumerate(NNX_PAIRS):
        src, dst = NnxCnn(sw, sd, nnx.Rngs(i)), NnxCnn(dw, dd, nnx.Rngs(10 + i))
        jobs.append((src, None, dst, X if i % 2 else None))
    return jobs


def _at_once(fn: Callable, jobs: Sequence[tuple]) -> list:
    """Runs ``fn(*job)`` for every job, each in its own thread, all started together."""
    barrier = threading.Barrier(len(jobs))

    def run(job: tuple):
        barrier.wait()
        return fn(*job)

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(run, jobs))


def _arrays(out) -> dict:
    if isinstance(out, nnx.Module):
        out = nnx.to_pure_dict(nnx.state(out, nnx.Param))
    return jax.tree.map(np.asarray, out)


def _transfer(src_params, src_def, dst_def, x):
    return _arrays(dpiat_jax.transfer(src_params, src_def, dst_def, 7, sample_input=x))


def _match(src_params, src_def, dst_def, x):
    report = dpiat_jax.match(src_params, src_def, dst_def, sample_input=x)
    return report.pairs, report.params_transferred, report.unmatched_dst


def _similarity(src_params, src_def, dst_def, x):
    src = src_params if src_def is None else (src_def, src_params)
    return dpiat_jax.similarity(src, dst_def, sample_input=x)


@pytest.fixture(scope="module")
def jobs() -> list[tuple]:
    return _linen_jobs() + _nnx_jobs()


@pytest.mark.parametrize("fn", [_match, _similarity], ids=["match", "similarity"])
def test_concurrent_calls_give_the_sequential_results(fn, jobs):
    sequential = [fn(*job) for job in jobs]
    assert len(jobs) >= 8
    assert _at_once(fn, jobs) == sequential
    assert _at_once(fn, jobs[::-1]) == sequential[::-1]


def test_concurrent_transfers_give_the_sequential_results(jobs):
    sequential = [_transfer(*job) for job in jobs]
    for got, want in zip(_at_once(_transfer, jobs), sequential):
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_concurrent_nnx_traces_record_their_own_call_order():
    """Many traces of models whose attribute order differs from their call order."""
    models = [NnxCnn(4 + i, 1 + i % 3, nnx.Rngs(i)) for i in range(8)]

    def names(model):
        return [layer.name for layer in dpiat_jax.module_layers(model, sample_input=X)]

    expected = [names(m) for m in models]
    assert all(n[-1] == "head" and n[0] == "convs/0" for n in expected)
    assert _at_once(names, [(m,) for m in models]) == expected
    assert type(models[0].head) is nnx.Linear and nnx.Linear.__call__.__name__ == "__call__"
