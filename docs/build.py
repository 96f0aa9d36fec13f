"""Builds the HTML documentation of dpiat_jax: pdoc API pages and the guide.

    python docs/build.py --out docs/_build     # then open docs/_build/index.html
    python docs/build.py --strict              # no allowance for known third-party warnings

Every public module of the package (found by walking it, so modules added later are
picked up) gets a page generated from its docstrings by pdoc (Google-style docstrings,
``:class:`` / ``:func:`` roles understood). ``docs/guide.md`` is rendered as
``guide.html`` beside them, in the same style, with its picture embedded and every
``dpiat_jax.…`` name it mentions in backticks checked and linked to its API entry;
every API page links to the guide.

The build fails (exit status 1, problems listed on stderr) on any warning pdoc emits
while extracting or rendering (``warnings`` and pdoc's logging), on a module that does
not import, on a warning raised by the package's own code at import time, and on a
guide reference or image that does not resolve. The only allowance is
:data:`KNOWN_WARNINGS`: warnings rooted in third-party annotations the package cannot
change; ``--strict`` removes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import html
import importlib
import logging
import pkgutil
import re
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
PACKAGE = "dpiat_jax"
GUIDE = HERE / "guide.md"
TEMPLATES = HERE / "templates"

#: ``(message regex, why it is tolerated)``. Keep this list short and specific.
KNOWN_WARNINGS: list[tuple[str, str]] = [
    (
        r"^Error parsing type annotation .*ArrayTree.* for "
        r"(flax\.training\.train_state|dpiat_jax\.experiments\.train)\.TrainState\.\w+\. "
        r"Import of ArrayTree failed",
        "flax's TrainState.opt_state is annotated optax.OptState = chex.ArrayTree, a "
        "recursive alias whose forward reference pdoc cannot evaluate; "
        "dpiat_jax.experiments.train."
        "TrainState inherits it.",
    ),
]


@dataclasses.dataclass
class BuildResult:
    """What a build produced and what went wrong."""

    out: Path
    modules: list[str]
    problems: list[str]
    tolerated: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _is_private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split("."))


def discover_modules(package: str, problems: list[str]) -> list[str]:
    """Imports ``package`` and every public submodule; returns their names, sorted.

    Import failures are appended to ``problems``; so are warnings raised at import time
    by the package's own files (third-party import noise is not the docs' business).
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            root = importlib.import_module(package)
        except Exception as err:  # noqa: BLE001 - reported, the build fails
            problems.append(f"cannot import {package}: {err!r}")
            return []
        names = [package]
        if hasattr(root, "__path__"):

            def onerror(name: str) -> None:
                problems.append(f"cannot import {name}: {sys.exc_info()[1]!r}")

            for info in pkgutil.walk_packages(root.__path__, package + ".", onerror=onerror):
                if not _is_private(info.name):
                    names.append(info.name)
        importable = []
        for name in names:
            try:
                importlib.import_module(name)
            except Exception as err:  # noqa: BLE001 - reported, the build fails
                problems.append(f"cannot import {name}: {err!r}")
            else:
                importable.append(name)
    package_dir = Path(root.__file__).resolve().parent
    for w in caught:
        if Path(w.filename).resolve().is_relative_to(package_dir):
            problems.append(
                f"import-time warning {w.category.__name__} at {w.filename}:{w.lineno}: {w.message}"
            )
    return sorted(set(importable))


# ----------------------------------------------------------------------------------
# The guide.

_CODE_REF = re.compile(r"<code>((?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*)(\(\))?</code>")
_MD_IMAGE = re.compile(r"!\[[^\]]*\]\(\s*([^)\s]+)\s*\)")


def _resolve(dotted: str, package: str):
    """``(module name, qualname)`` of the documented entry for a dotted name, or None."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        modname = ".".join(parts[:cut])
        try:
            obj = importlib.import_module(modname)
        except ImportError:
            continue
        rest = parts[cut:]
        for attr in rest:
            if not hasattr(obj, attr):
                return None
            obj = getattr(obj, attr)
        if not rest:
            return modname, ""
        home = getattr(obj, "__module__", None)
        qual = getattr(obj, "__qualname__", None)
        if isinstance(home, str) and isinstance(qual, str) and home.startswith(package):
            return home, qual  # link to where it is defined, not re-exported
        return modname, ".".join(rest)
    return None


def _markdown(text: str):
    """pdoc's own Markdown conversion, with a table of contents three levels deep."""
    from pdoc import render_helpers  # its markdown2: vendored (pdoc < 15) or the package

    extras = {**render_helpers.markdown_extensions, "toc": {"depth": 3}}
    return render_helpers.markdown2.markdown(
        text, extras=extras, link_patterns=render_helpers.markdown_link_patterns
    )


def render_guide(all_modules: dict, package: str, problems: list[str], guide: Path = GUIDE) -> str:
    """The guide page's HTML; unresolvable references and images go to ``problems``.

    Needs :func:`configure` to have been called (the page uses pdoc's templates).
    """
    import pdoc.docstrings
    import pdoc.render

    text = guide.read_text(encoding="utf-8")
    for href in _MD_IMAGE.findall(text):
        if "://" not in href and not (guide.parent / href).is_file():
            problems.append(f"{guide.name}: image {href!r} does not exist")
    text = pdoc.docstrings.embed_images(text, guide)
    body = _markdown(text)
    toc = getattr(body, "toc_html", "") or ""
    pages: dict[str, str] = {}

    def link(m: re.Match) -> str:
        dotted = m.group(1)
        if not dotted.startswith(package + ".") and dotted != package:
            return m.group(0)
        target = _resolve(html.unescape(dotted), package)
        if target is None:
            problems.append(f"{guide.name}: `{dotted}` does not exist")
            return m.group(0)
        modname, qual = target
        if modname not in all_modules:
            problems.append(f"{guide.name}: `{dotted}` lives in {modname}, not documented")
            return m.group(0)
        if qual:
            page = pages.setdefault(modname, "")
            if not page:
                page = pages[modname] = pdoc.render.html_module(all_modules[modname], all_modules)
            if f'id="{qual}"' not in page:
                problems.append(
                    f"{guide.name}: `{dotted}` has no entry on the {modname} API page "
                    "(undocumented or private?)"
                )
                return m.group(0)
        href = modname.replace(".", "/") + ".html" + (f"#{qual}" if qual else "")
        return f'<a href="{href}">{m.group(0)}</a>'

    body = _CODE_REF.sub(link, str(body))
    title = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), "Guide")
    return pdoc.render.env.get_template("guide.html.jinja2").render(
        all_modules=all_modules,
        root_module_name=package,
        guide_html=body,
        toc_html=toc,
        guide_title=f"{package}: {title}",
    )


# ----------------------------------------------------------------------------------
# The build.


def _split_known(messages: list[tuple[str, str]], strict: bool) -> tuple[list[str], list[str]]:
    """Splits ``(category, message)`` pairs into problems and tolerated known warnings."""
    problems, tolerated = [], []
    for category, msg in messages:
        known = not strict and any(re.search(rx, msg, re.S) for rx, _ in KNOWN_WARNINGS)
        (tolerated if known else problems).append(f"{category}: {msg}")
    return problems, tolerated


# Sphinx's "~" prefix (:class:`~a.b.C`, shown as "C") is not understood by pdoc, which
# would print "~a.b.C" unlinked; without the "~" pdoc links the full name.
_TILDE_ROLE = re.compile(r"(:(?:py:)?(?:mod|func|data|const|class|meth|attr|exc|obj):`)~")


def configure(package: str = PACKAGE) -> None:
    """Sets pdoc's (global) rendering options and adds this folder's templates.

    Also installs a ``to_markdown`` filter (pdoc's documented customisation point,
    ``pdoc.render.env``) that drops the Sphinx ``~`` from cross-reference roles.
    """
    import jinja2
    import pdoc.render
    import pdoc.render_helpers

    original = pdoc.render_helpers.to_markdown_with_context

    @jinja2.pass_context
    def to_markdown(context, docstring: str) -> str:
        return original(context, _TILDE_ROLE.sub(r"\1", docstring))

    pdoc.render.env.filters["to_markdown"] = to_markdown
    version = getattr(sys.modules.get(package), "__version__", "")
    pdoc.render.configure(
        docformat="google",
        template_directory=TEMPLATES,
        footer_text=f"{package} {version}".strip(),
        search=True,
        show_source=True,
    )


def build(
    out: Path | str = HERE / "_build",
    *,
    package: str = PACKAGE,
    strict: bool = False,
    guide: bool = True,
) -> BuildResult:
    """Renders the API pages of ``package`` (and the guide) into ``out``.

    Returns a :class:`BuildResult`; ``result.ok`` is False when anything went wrong.
    """
    import pdoc
    import pdoc.doc
    import pdoc.render

    out = Path(out)
    problems: list[str] = []
    modules = discover_modules(package, problems)
    configure(package)
    handler = _Collect()
    pdoc_logger = logging.getLogger("pdoc")
    pdoc_logger.addHandler(handler)
    messages: list[tuple[str, str]] = []
    all_modules: dict = {}
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for name in modules:
                try:
                    all_modules[name] = pdoc.doc.Module.from_name(name)
                except Exception as err:  # noqa: BLE001 - reported, the build fails
                    problems.append(f"pdoc cannot load {name}: {err!r}")
            out.mkdir(parents=True, exist_ok=True)
            for module in all_modules.values():
                page = pdoc.render.html_module(module, all_modules)
                path = out / f"{module.fullname.replace('.', '/')}.html"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(page, encoding="utf-8")
            index = pdoc.render.html_index(all_modules)
            if index:
                (out / "index.html").write_text(index, encoding="utf-8")
            search = pdoc.render.search_index(all_modules)
            if search:
                (out / "search.js").write_text(search, encoding="utf-8")
            if guide:
                page = render_guide(all_modules, package, problems)
                (out / "guide.html").write_text(page, encoding="utf-8")
        messages += [(w.category.__name__, str(w.message)) for w in caught]
    finally:
        pdoc_logger.removeHandler(handler)
    messages += [(f"pdoc log {r.levelname}", r.getMessage()) for r in handler.records]
    new, tolerated = _split_known(messages, strict)
    return BuildResult(out, list(all_modules), problems + new, tolerated)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build the dpiat_jax HTML documentation.")
    parser.add_argument("--out", type=Path, default=HERE / "_build", help="output folder")
    parser.add_argument(
        "--strict", action="store_true", help="fail on the known third-party warnings too"
    )
    parser.add_argument("--package", default=PACKAGE, help="the package to document")
    parser.add_argument("--no-guide", action="store_true", help="skip guide.html")
    args = parser.parse_args(argv)
    result = build(args.out, package=args.package, strict=args.strict, guide=not args.no_guide)
    print(f"documented {len(result.modules)} modules into {result.out}")
    for msg in result.tolerated:
        print(f"tolerated known warning: {msg.splitlines()[0][:160]}...", file=sys.stderr)
    if result.problems:
        print(f"docs build FAILED with {len(result.problems)} problem(s):", file=sys.stderr)
        for msg in result.problems:
            print(f"  - {msg}", file=sys.stderr)
        return 1
    print(f"ok: open {result.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
