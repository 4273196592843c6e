"""The command line against its docs: every --help readable, every long option documented."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command and sub-command's parser, by its path ("maskcrypt", "maskcrypt masks generate", ...)."""
    from maskcrypt.cli.main import build_parser

    found: dict[str, argparse.ArgumentParser] = {}

    def walk(name: str, parser: argparse.ArgumentParser) -> None:
        found[name] = parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    walk(f"{name} {sub}", child)

    walk("maskcrypt", build_parser())
    return found


def test_every_help_has_readable_placeholders_and_each_default_once(monkeypatch):
    """Rendered wide (one line per option): no config-path placeholder (CFG__...), no default said twice."""
    monkeypatch.setenv("COLUMNS", "1000")
    parsers = _parsers()
    assert len(parsers) > 12
    bad = []
    for name, parser in parsers.items():
        text = parser.format_help()
        if "CFG__" in text:
            bad.append(f"{name}: a CFG__ placeholder")
        for line in text.splitlines():
            if line.count("(default") > 1 or re.search(r"\(default[^)]*\)\s*\(default", line):
                bad.append(f"{name}: {line.strip()[:120]}")
    assert not bad, "\n".join(bad)


def test_every_long_option_of_every_command_is_documented():
    """Each long option appears verbatim somewhere in docs/ (where users look for it)."""
    docs = "\n".join(p.read_text() for p in sorted(DOCS.glob("*.md")))
    missing = sorted({f"{name}: {opt}" for name, parser in _parsers().items() for action in parser._actions
                      for opt in action.option_strings
                      if opt.startswith("--") and opt != "--help" and not re.search(re.escape(opt) + r"(?![\w-])",
                                                                                     docs)})
    assert not missing, "long options no doc mentions:\n" + "\n".join(missing)
