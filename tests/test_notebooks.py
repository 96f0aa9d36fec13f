"""The Colab notebooks in ``colabs/``: committed without outputs, in step with their
generator ``colabs/build_notebooks.py``, and runnable top to bottom.

Each notebook is executed with nbclient in a fresh ``python3`` kernel (this interpreter),
in a temporary working directory, with ``DPIAT_SMOKE=1`` (offline digits, tiny models, a
few steps); any cell error fails its test. The kernels run two at a time, and XLA's CPU
backend optimisation is turned off for them: for these tiny models compiling dominates,
and it is several times faster without it (set ``DPIAT_NOTEBOOK_JOBS`` and
``DPIAT_NOTEBOOK_XLA_FLAGS`` to change either).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

COLABS = Path(__file__).resolve().parents[1] / "colabs"
NOTEBOOKS = [
    "quickstart.ipynb",
    "choose_a_source.ipynb",
    "nas_with_transfer.ipynb",
    "flax_training_loop.ipynb",
]
CELL_TIMEOUT_S = 300
JOBS = int(os.environ.get("DPIAT_NOTEBOOK_JOBS", "2"))
XLA_FLAGS = os.environ.get("DPIAT_NOTEBOOK_XLA_FLAGS", "--xla_backend_optimization_level=0")


def _read(name: str):
    return nbformat.read(COLABS / name, as_version=4)


def _generator():
    spec = importlib.util.spec_from_file_location("build_notebooks", COLABS / "build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_four_notebooks_are_committed():
    assert sorted(p.name for p in COLABS.glob("*.ipynb")) == sorted(NOTEBOOKS)
    assert (COLABS / "README.md").is_file()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_without_outputs(name):
    nb = _read(name)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}: a cell has outputs; strip them"
            assert cell.execution_count is None, f"{name}: execution_count is set"
        assert "execution" not in cell.metadata, f"{name}: execution timings are committed"
    assert nb.metadata.kernelspec.name == "python3"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_generated_by_build_notebooks(name):
    expected = _generator().render(name)
    assert (COLABS / name).read_text() == expected, (
        f"{name} differs from colabs/build_notebooks.py; run python colabs/build_notebooks.py"
    )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_install_cell_is_conditional_and_backend_printed(name):
    cells = [c.source for c in _read(name).cells if c.cell_type == "code"]
    install = cells[0]
    assert install == cells_of_first_notebook()[0]  # one install cell for all
    pip_lines = [line for line in install.splitlines() if "%pip install" in line]
    assert pip_lines and all(line.startswith("    ") for line in pip_lines)  # inside an if
    assert "<owner>" not in install and "<" not in "".join(pip_lines)  # no placeholder
    setup = cells[1]
    assert "jax.default_backend()" in setup and "jax.devices()" in setup
    assert 'os.environ.get("DPIAT_SMOKE"' in setup


def cells_of_first_notebook() -> list[str]:
    return [c.source for c in _read(NOTEBOOKS[0]).cells if c.cell_type == "code"]


def run_install_cell(missing: bool) -> list[str]:
    """Runs the install cell as plain Python, ``%pip`` lines recorded instead of run;
    ``missing`` pretends dpiat_jax is not installed. Returns the pip arguments."""
    source = cells_of_first_notebook()[0]
    if missing:
        source = source.replace('"dpiat_jax",', '"no_such_module_dpiat_jax",', 1)
    source = re.sub(r"^(\s*)%pip (.*)$", r"\1PIP.append(f'''\2''')", source, flags=re.M)
    namespace: dict = {"PIP": []}
    saved = list(sys.path)
    try:
        exec(compile(source, "install cell", "exec"), namespace)  # noqa: S102
    finally:
        sys.path[:] = saved
    return namespace["PIP"]


def test_install_cell_does_nothing_when_installed():
    assert run_install_cell(missing=False) == []


def test_install_cell_installs_from_the_checkout_then_git(tmp_path, monkeypatch):
    """From colabs/ of a checkout it installs that checkout; elsewhere the folder in
    DPIAT_JAX_SOURCE, else the DPIAT_JAX_GIT URL, else it says what to do."""
    checkout, elsewhere = tmp_path / "repo", tmp_path / "elsewhere"
    (checkout / "colabs").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("")
    elsewhere.mkdir()
    monkeypatch.delenv("DPIAT_JAX_GIT", raising=False)
    monkeypatch.setenv("DPIAT_JAX_SOURCE", str(tmp_path / "nothing"))
    monkeypatch.chdir(checkout / "colabs")
    assert run_install_cell(missing=True) == [f'install --quiet -e "{checkout}[experiments]"']
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("DPIAT_JAX_SOURCE", str(checkout))
    assert run_install_cell(missing=True) == [f'install --quiet -e "{checkout}[experiments]"']
    monkeypatch.setenv("DPIAT_JAX_SOURCE", str(tmp_path / "nothing"))
    monkeypatch.setenv("DPIAT_JAX_GIT", "https://example.org/dpiat_jax.git")
    git = 'install --quiet "dpiat_jax[experiments] @ git+https://example.org/dpiat_jax.git"'
    assert run_install_cell(missing=True) == [git]
    monkeypatch.delenv("DPIAT_JAX_GIT")
    with pytest.raises(RuntimeError, match="DPIAT_JAX_GIT"):
        run_install_cell(missing=True)


def _kernel_env(kernels_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DPIAT_SMOKE"] = "1"
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {XLA_FLAGS}".strip()
    env["JUPYTER_PATH"] = os.pathsep.join(
        [str(kernels_dir), *filter(None, [env.get("JUPYTER_PATH")])]
    )
    env.pop("MPLBACKEND", None)  # the kernel's inline backend, as in Jupyter and Colab
    env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
    return env


def _python3_kernelspec(root: Path) -> Path:
    """A ``python3`` kernelspec that runs this interpreter (found first via JUPYTER_PATH),
    so the kernels see the same installed dpiat_jax as the tests."""
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    kernel = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(kernel))
    return root


async def _execute_all(tmp: Path, env: dict[str, str]) -> dict[str, tuple[str | None, float]]:
    limit = asyncio.Semaphore(max(1, JOBS))

    async def one(name: str) -> tuple[str, tuple[str | None, float]]:
        async with limit:
            nb = _read(name)
            cwd = tmp / Path(name).stem
            cwd.mkdir()
            client = nbclient.NotebookClient(
                nb,
                timeout=CELL_TIMEOUT_S,
                startup_timeout=120,
                kernel_name="python3",
                resources={"metadata": {"path": str(cwd)}},
            )
            start = time.perf_counter()
            try:
                await client.async_execute(env=env)
            except Exception as err:  # noqa: BLE001 - reported by the notebook's test
                return name, (f"{type(err).__name__}: {err}", time.perf_counter() - start)
            return name, (None, time.perf_counter() - start)

    return dict(await asyncio.gather(*(one(name) for name in NOTEBOOKS)))


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    """Runs every notebook once (``JOBS`` at a time); ``{name: (error or None, seconds)}``."""
    tmp = tmp_path_factory.mktemp("notebooks")
    env = _kernel_env(_python3_kernelspec(tmp / "jupyter"))
    with pytest.MonkeyPatch.context() as mp:  # the kernelspec lookup reads JUPYTER_PATH
        mp.setenv("JUPYTER_PATH", env["JUPYTER_PATH"])
        results = asyncio.run(_execute_all(tmp, env))
    for name, (error, seconds) in results.items():  # shown with pytest -s
        print(f"{name}: {'failed' if error else 'ran'} in {seconds:.0f}s")
    return results


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(executed, name):
    error, seconds = executed[name]
    if error is not None:
        pytest.fail(f"{name} failed after {seconds:.0f}s:\n{error}", pytrace=False)
    assert seconds < 4 * CELL_TIMEOUT_S
