"""Every ```python block of README.md and docs/guide.md runs as written.

The blocks of one file run in order in one fresh namespace (a later block may use what an
earlier one defined, as a reader would), in a temporary working directory (a block may
write a file, e.g. ``report.plot("alignment.png")``).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ("README.md", "docs/guide.md")
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def python_blocks(text: str) -> list[str]:
    """The ```python fenced blocks of a markdown text, in order."""
    return _BLOCK.findall(text)


def test_python_blocks_are_found():
    text = "a\n```python\nx = 1\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == ["x = 1\n", "y = x\n"]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_python_blocks_run(document, tmp_path, monkeypatch):
    blocks = python_blocks((ROOT / document).read_text())
    assert blocks, f"{document} has no python block"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__main__"}
    for i, block in enumerate(blocks, start=1):
        code = compile(block, f"{document} (python block {i})", "exec")
        exec(code, namespace)  # noqa: S102 - the documentation's own examples


def api_table_names(text: str) -> set[str]:
    """The public names the rows of README's ``## API`` table start with."""
    section = text.split("## API", 1)[1].split("\n## ", 1)[0]
    names = set()
    for row in re.findall(r"^\| (.*?) \|", section, re.MULTILINE):
        for code in re.findall(r"`([^`]*)`", row):
            names.add(re.match(r"[A-Za-z_][A-Za-z_0-9.]*", code).group(0))
    return names


def test_api_table_lists_exactly_the_public_names():
    import dpiat_jax

    listed = api_table_names((ROOT / "README.md").read_text())
    listed = {name for name in listed if "." not in name}  # plan.apply: a method
    assert listed == set(dpiat_jax.__all__), (
        f"README's API table and dpiat_jax.__all__ differ: only in README "
        f"{sorted(listed - set(dpiat_jax.__all__))}, only in __all__ "
        f"{sorted(set(dpiat_jax.__all__) - listed)}"
    )


def command_rows(text: str) -> dict[str, str]:
    """``dpiat-jax`` subcommand -> its row of README's ``## Command line`` table."""
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `dpiat-jax ([\w-]+)(.*?)$", section, re.MULTILINE)
    return {name: rest for name, rest in rows}


def test_command_rows_are_found():
    text = "## Command line\n| `dpiat-jax demo [--out DIR]` | the demo |\n## Next\n"
    assert command_rows(text) == {"demo": " [--out DIR]` | the demo |"}


def test_cli_table_lists_every_option_of_every_subcommand():
    """Each subcommand's row names every option its ``--help`` lists (``--help`` aside)."""
    import argparse

    from dpiat_jax.cli import main  # noqa: F401 - registers the subcommands
    from dpiat_jax.cli.registry import SUBCOMMANDS

    rows = command_rows((ROOT / "README.md").read_text())
    assert set(rows) == set(SUBCOMMANDS), "README's CLI table and the subcommands differ"
    for name, sub in SUBCOMMANDS.items():
        parser = argparse.ArgumentParser()
        sub.add_arguments(parser)
        options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", parser.format_help()))
        missing = sorted(o for o in options - {"--help"} if o not in rows[name])
        assert not missing, f"README's row of `dpiat-jax {name}` lacks {missing}"
