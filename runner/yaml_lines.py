"""YAML documents with line numbers: parse once, then locate any field path at the line it was written.

Manifests and grid files share this, so every problem in either prints as `FILE:LINE: field: message`.
Importing it must stay cheap (no torch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from runner.errors import Problem


@dataclass(frozen=True)
class LineIndex:
    """Maps a path of keys/indices in a YAML document to the line it starts on (1-based).

    `tags` are names pydantic inserts into error locations for union members (method.lora.r):
    they have no level in the YAML and are skipped when they equal the mapping's `kind`, or when
    the mapping has no `kind` and the name is one of `defaulted_tags` (decoding defaults to greedy).
    """

    root: yaml.Node
    defaulted_tags: frozenset[str] = frozenset()

    def locate(self, loc: tuple[Any, ...]) -> tuple[int, str]:
        """Line of the deepest node on `loc` that exists, and the dotted field for humans."""
        node: yaml.Node | None = self.root
        line = self.root.start_mark.line + 1
        shown: list[str] = []
        for part in loc:
            if node is not None:
                child = _child(node, part)
                if child is not None:
                    key_node, node = child
                    line = (key_node or node).start_mark.line + 1
                    shown.append(str(part))
                    continue
                if self._is_kind_tag(node, part):
                    continue
                node = None  # a missing or unknown key: report at its parent's line
            shown.append(str(part))
        return line, ".".join(shown)

    def _is_kind_tag(self, node: yaml.Node, part: Any) -> bool:
        if not isinstance(node, yaml.MappingNode):
            return False
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == "kind":
                return isinstance(value, yaml.ScalarNode) and value.value == str(part)
        return isinstance(part, str) and part in self.defaulted_tags


def _child(node: yaml.Node, part: Any) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return None, node.value[part]
    return None


def duplicate_keys(node: yaml.Node, path: tuple[str, ...] = ()) -> list[tuple[int, str, str]]:
    """(line, dotted path, key) for every key that appears twice in one mapping."""
    found: list[tuple[int, str, str]] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            name = str(key.value)
            if name in seen:
                found.append((key.start_mark.line + 1, ".".join(path + (name,)), name))
            seen.add(name)
            found += duplicate_keys(value, path + (name,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += duplicate_keys(item, path + (str(index),))
    return found


def parse_yaml(path: Path, text: str, what: str, defaulted_tags: frozenset[str] = frozenset()) -> tuple[Any, LineIndex | None, list[Problem]]:
    """(data, line index, problems) of a YAML mapping; index None when the text is not a usable mapping.

    `what` names the expected mapping in messages ("a mapping of manifest sections").
    """
    shown = str(path)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else 1
        reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        return None, None, [Problem(f"invalid YAML: {reason}", shown, line)]
    if root is None or data is None:
        return None, None, [Problem(f"file is empty; expected {what}", shown, 1)]
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        return None, None, [Problem(f"expected {what} at the top level, got {kind}", shown, root.start_mark.line + 1)]
    problems = [
        Problem(f"duplicate key {key!r} (the later value would silently win)", shown, line, dotted)
        for line, dotted, key in duplicate_keys(root)
    ]
    return data, LineIndex(root, defaulted_tags), problems


def read_text(path: Path) -> tuple[str | None, list[Problem]]:
    """A file's UTF-8 text, or the problem that prevents reading it (with the line of a bad byte)."""
    shown = str(path)
    try:
        return path.read_text(encoding="utf-8"), []
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        return None, [Problem("file is not UTF-8 text", shown, line)]
    except OSError as exc:
        return None, [Problem(f"cannot read: {exc.strerror}", shown)]
