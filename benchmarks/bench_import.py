"""Import time of ``dpiat_jax`` against its own dependencies (``import jax, flax.linen``).

    python benchmarks/bench_import.py [--repeats 5]

Every measurement is a fresh interpreter (``python -c``) that times its import with
``time.perf_counter`` around the statement, so neither the interpreter's start nor
a warm module cache of this process counts; the operating system's file cache is warm
after the first run. The table gives the median over ``--repeats`` runs of each statement,
and which optional dependencies each one loaded (``import dpiat_jax`` should load none).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

from common import machine, table

STATEMENTS = {
    "jax": "import jax",
    "jax + flax.linen": "import jax, flax.linen",
    "dpiat_jax": "import dpiat_jax",
}

OPTIONAL = ("tensorflow_datasets", "sklearn", "mnist1d", "optax", "orbax", "matplotlib", "tqdm")

_CHILD = """
import json, sys, time
t = time.perf_counter()
{statement}
seconds = time.perf_counter() - t
print(json.dumps({{"seconds": seconds, "optional": [m for m in {optional!r} if m in sys.modules]}}))
"""


def time_import(statement: str) -> tuple[float, list[str]]:
    """Time ``statement`` in a fresh interpreter; return seconds and the optional modules loaded."""
    code = _CHILD.format(statement=statement, optional=OPTIONAL)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=600
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return float(out["seconds"]), list(out["optional"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs per statement (median)")
    args = parser.parse_args()
    time_import("import dpiat_jax")  # warm the file cache and any bytecode compilation
    rows = []
    medians = {}
    for label, statement in STATEMENTS.items():
        runs = [time_import(statement) for _ in range(args.repeats)]
        medians[label] = statistics.median(s for s, _ in runs)
        rows.append(
            [
                f"`{statement}`",
                f"{medians[label]:.2f}",
                ", ".join(runs[-1][1]) or "none",
            ]
        )
    print(f"Import time, median of {args.repeats} fresh interpreters ({machine()})\n")
    print(table(["statement", "seconds", "optional dependencies loaded"], rows))
    extra = medians["dpiat_jax"] - medians["jax + flax.linen"]
    print(f"\n`import dpiat_jax` costs {extra:+.2f} s over `import jax, flax.linen`.")


if __name__ == "__main__":
    main()
