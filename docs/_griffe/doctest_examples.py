"""Griffe extension for the API reference: pickgrad's ``Example:`` sections are doctests.

Griffe's Google-style parser renders a section titled ``Examples:`` as code (its ``>>>`` lines
become Python blocks) but treats the singular ``Example:`` as an admonition of plain markdown,
where ``>>>`` would read as nested block quotes. pickgrad's docstrings say ``Example:``
(optionally with a parenthesised title, which may span lines); this extension renames the
section before the docstring is parsed and keeps the title as the section's first line.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_HEADING = re.compile(r"^(?P<indent>\s*)Example(?P<rest>\s*\(.*)?:\s*$")
_TITLE_START = re.compile(r"^(?P<indent>\s*)Example\s*\((?P<title>.*)$")


def rename_example_sections(text: str) -> str:
    """``Example:`` -> ``Examples:``; ``Example (title...):`` -> ``Examples:`` then ``title:``."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = _HEADING.match(line)
        start = _TITLE_START.match(line)
        if heading and not heading.group("rest"):
            out.append(f"{heading.group('indent')}Examples:")
        elif start:
            indent, title = start.group("indent"), [start.group("title")]
            while not title[-1].rstrip().endswith("):") and i + 1 < len(lines):
                i += 1
                title.append(lines[i].strip())
            text_title = " ".join(part.strip() for part in title).rstrip()[: -len("):")]
            out += [f"{indent}Examples:", f"{indent}    {text_title.strip()}:", ""]
        else:
            out.append(line)
        i += 1
    return "\n".join(out)


class DoctestExamples(griffe.Extension):
    """Rename ``Example:`` sections to ``Examples:`` on every loaded object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rename_example_sections(obj.docstring.value)
