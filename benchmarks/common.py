"""Shared helpers of the benchmark scripts: timing, subprocess runs, spec trees, tables."""

from __future__ import annotations

import json
import os
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))  # the plain-Python oracles live with the tests


def median_time(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Median wall time of ``repeats`` calls (seconds), after the caller warmed ``fn``."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def once(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall time of one call and its result."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def machine() -> str:
    """A one-line description of the machine and JAX backend."""
    import jax

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (
        f"{cpu}, {os.cpu_count()} cores; jax {jax.__version__} on {jax.default_backend()} "
        f"({devices}); Python {platform.python_version()}"
    )


def zoo_tree(name: str, size: int | None = None) -> list:
    """The spec tree of a zoo model, traced abstractly at its natural input size."""
    import jax.numpy as jnp

    from dpiat_jax.api import module_blocks
    from dpiat_jax.blocks import to_spec_tree
    from dpiat_jax.models import get_model

    if size is None:
        size = 32 if name.startswith(("cifar", "wide", "vgg_small")) else 224
    x = jnp.zeros((1, size, size, 3))
    return to_spec_tree(module_blocks(get_model(name), sample_input=x))


def count_leaves(tree: list) -> int:
    """Returns the number of leaves (layers and placeholders) of a spec tree."""
    return sum(count_leaves(x) if isinstance(x, list) else 1 for x in tree)


def run_child(code: str, payload: Any, env: dict[str, str] | None = None) -> Any:
    """Runs ``code`` in a fresh Python process; it reads ``PAYLOAD`` (unpickled) and must
    assign a JSON-serialisable ``RESULT``. Returns ``RESULT``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "payload.pkl")
        out = os.path.join(tmp, "result.json")
        with open(src, "wb") as f:
            pickle.dump(payload, f)
        script = (
            "import pickle, json, sys\n"
            f"sys.path.insert(0, {os.path.join(ROOT, 'tests')!r})\n"
            f"PAYLOAD = pickle.load(open({src!r}, 'rb'))\n"
            f"{code}\n"
            f"json.dump(RESULT, open({out!r}, 'w'))\n"
        )
        full_env = {**os.environ, **(env or {})}
        subprocess.run([sys.executable, "-c", script], check=True, env=full_env)
        with open(out) as f:
            return json.load(f)


#: Child-process code (for :func:`run_child`): ``peak_of(fn)`` runs ``fn`` once and returns
#: the peak resident set size above the level just before it, sampled every millisecond.
PEAK_SAMPLER = """
import gc, os, threading, time
import jax

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

def peak_of(fn):
    gc.collect()
    base = rss()
    peak = [base]
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], rss())
            time.sleep(0.001)
    thread = threading.Thread(target=sample)
    thread.start()
    out = jax.block_until_ready(fn())
    stop.set(); thread.join()
    peak[0] = max(peak[0], rss())
    del out
    return peak[0] - base
"""


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A markdown table."""

    def fmt(x: Any) -> str:
        if isinstance(x, float):
            if x != x:  # NaN
                return "-"
            if abs(x) >= 100:
                return f"{x:,.0f}"
            if abs(x) >= 1:
                return f"{x:.2f}"
            return f"{x:.4f}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def ms(x: float) -> float:
    """Returns seconds as milliseconds."""
    return 1000.0 * x
