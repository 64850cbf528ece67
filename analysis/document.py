"""The report as data — sections of paragraphs, tables, lists and figures — rendered to Markdown
and HTML by separate modules, so both always say the same thing."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Table:
    """Cells already formatted as text; `numeric` columns are right-aligned."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    numeric: tuple[bool, ...]
    interactive: bool = False
    """In HTML, sortable by clicking a header and filtered by a text box (Markdown: a plain table)."""


@dataclass(frozen=True)
class Bullets:
    """A list of short items (skipped files, notes)."""

    items: tuple[str, ...]


@dataclass(frozen=True)
class Figure:
    """A figure written as figures/<name>.png and figures/<name>.svg."""

    name: str
    caption: str


Block = Union[str, Table, Bullets, Figure]
"""A str is a paragraph; `backticks` mark code in both renderings."""


@dataclass(frozen=True)
class Section:
    title: str
    blocks: tuple[Block, ...]
    level: int = 2


@dataclass(frozen=True)
class Document:
    title: str
    sections: tuple[Section, ...]
