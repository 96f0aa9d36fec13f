"""The documentation builds (pdoc API pages + guide) without warnings, and the guide's
picture still shows what the library does."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
CORE_MODULES = [
    "api",
    "alignment",
    "blocks",
    "layers",
    "matching",
    "scores",
    "spec",
    "tensors",
    "variables",
    "trace.inputs",
    "trace.linen",
    "trace.nnx",
    "similarity",
    "matchers",
    "experiments.train",
    "cli.checkpoints",
    "plotting",
    "models",
]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"_dpiat_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses need the module registered
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def build():
    return _load("build")


@pytest.fixture(scope="module")
def result(build, tmp_path_factory):
    return build.build(tmp_path_factory.mktemp("docs") / "html")


def test_docs_build_without_warnings(result):
    assert result.ok, "docs build problems:\n" + "\n".join(result.problems)


def test_every_public_module_has_a_page(result):
    out = result.out
    assert (out / "index.html").is_file() and (out / "search.js").is_file()
    for name in CORE_MODULES:
        assert f"dpiat_jax.{name}" in result.modules
    for name in result.modules:
        page = out / (name.replace(".", "/") + ".html")
        assert page.is_file(), name
        assert not any(part.startswith("_") for part in name.split("."))
    package_page = (out / "dpiat_jax.html").read_text(encoding="utf-8")
    for name in CORE_MODULES:  # the nav lists every submodule, not only those in __all__
        top = name.split(".")[0]  # a subpackage's page lists its own submodules
        assert f'href="dpiat_jax/{top}.html"' in package_page
    assert 'href="guide.html"' in package_page
    assert 'href="../guide.html"' in (out / "dpiat_jax" / "api.html").read_text(encoding="utf-8")
    # Google-style sections became HTML, not literal "Args:" text.
    api = (out / "dpiat_jax" / "api.html").read_text(encoding="utf-8")
    assert '<h6 id="arguments">Arguments:</h6>' in api
    # Sphinx-style :class:`~x.Y` roles become links, not a literal "~x.Y".
    plotting = (out / "dpiat_jax" / "plotting.html").read_text(encoding="utf-8")
    assert "<code>~dpiat_jax" not in plotting
    assert 'href="../dpiat_jax.html#MatchReport"' in plotting


def test_guide_page(result):
    page = (result.out / "guide.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in page  # the picture is embedded
    for anchor in (
        "dpiat_jax/api.html#transfer",
        "dpiat_jax/tensors.html#clip",
        "dpiat_jax/plotting.html#plot_report",
    ):
        assert f'href="{anchor}"' in page
    for text in ("dp[i, j]", "sqrt(i-k+1)", "score(T, T)", "(b - a) // 2"):
        assert text in page
    for heading in (
        "the-pipeline",
        "4-alignment-the-dynamic-programme",
        "similarity-choosing-a-source",
    ):
        assert f'id="{heading}"' in page


def test_warnings_and_bad_references_fail_the_build(build, tmp_path, capsys, monkeypatch):
    pkg = tmp_path / "docs_probe_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text('"""A probe.\n\n.. include:: missing.md\n"""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    code = build.main(["--out", str(tmp_path / "html"), "--package", pkg.name, "--no-guide"])
    assert code == 1
    assert "Cannot include" in capsys.readouterr().err

    guide = tmp_path / "guide.md"
    guide.write_text(
        "# G\n\n`dpiat_jax.api.no_such_function` and `dpiat_jax.api.match`.\n\n"
        "![missing](nope.png)\n"
    )
    import pdoc.doc

    import dpiat_jax.api

    build.configure()
    problems: list[str] = []
    modules = {"dpiat_jax.api": pdoc.doc.Module(dpiat_jax.api)}
    page = build.render_guide(modules, "dpiat_jax", problems, guide=guide)
    assert len(problems) == 2, problems
    assert any("no_such_function" in p for p in problems)
    assert any("nope.png" in p for p in problems)
    assert 'href="dpiat_jax/api.html#match"' in page


def test_known_warnings_are_listed_and_strict_rejects_them(build):
    msg = (
        "Error parsing type annotation typing.Union[ForwardRef('ArrayTree')] for "
        "dpiat_jax.experiments.train.TrainState.__init__. Import of ArrayTree failed: "
        "name 'ArrayTree' "
        "is not defined"
    )
    problems, tolerated = build._split_known([("UserWarning", msg)], strict=False)
    assert not problems and len(tolerated) == 1
    problems, tolerated = build._split_known([("UserWarning", msg)], strict=True)
    assert len(problems) == 1 and not tolerated
    other = "Error parsing type annotation Foo for dpiat_jax.api.transfer. Import of Foo failed"
    assert build._split_known([("UserWarning", other)], strict=False)[0]


def test_guide_figure_matches_the_library(tmp_path):
    """docs/make_figure.py recomputes the picture and checks it against dpiat_jax.align."""
    figure = _load("make_figure")
    out = figure.make_figure(tmp_path / "pipeline.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (DOCS / "pipeline.png").is_file()
    guide = (DOCS / "guide.md").read_text(encoding="utf-8")
    assert guide.count("](pipeline.png)") == 1  # exactly one picture
    assert textwrap.dedent(figure.__doc__).startswith("Draws docs/pipeline.png")
