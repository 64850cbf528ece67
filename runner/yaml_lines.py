"""YAML documents with line numbers: parse once, then locate any field path at the line it was written.

Manifests and grid files share this, so every problem in either prints as `FILE:LINE: field: message`.
Scalars are read with YAML 1.2 core-schema rules (`yes`, `on`, `2024-01-01` and `1:30` are text;
`1e3` is a number), and plain scalars that YAML 1.1 would read as another number (`1:30` = 90,
`010` = 8) are refused rather than guessed. Importing it must stay cheap (no torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import ConstructorError, SafeConstructor
from yaml.scanner import ScannerError

from runner.errors import Problem

MAX_NODES = 100_000
"""Most nodes a document may have once its aliases are expanded. Every shipped manifest and grid
has under 1,000; a "billion laughs" document (9 aliases of 9 aliases, 9 levels deep) has 9^9."""

MAX_DEPTH = 100
"""Most levels of nesting a document may have (a manifest has 4). PyYAML's scanner does work
proportional to the depth for every token, so 20,000 `[` would take it hours."""

_CORE = "tag:yaml.org,2002:"


class Yaml12Loader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's implicit types (null, bool, int, float),
    refusing documents nested deeper than MAX_DEPTH while it scans them."""

    yaml_implicit_resolvers: dict = {}

    def fetch_flow_collection_start(self, TokenClass: type) -> None:  # noqa: N803 (PyYAML's name)
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_DEPTH:
            raise ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        return super().add_indent(column)


# The core schema's regular expressions (YAML 1.2.2, section 10.3.2), in resolution order.
for _tag, _pattern, _first in (
    ("null", r"^(?:~|null|Null|NULL|)$", ["~", "n", "N", ""]),
    ("bool", r"^(?:true|True|TRUE|false|False|FALSE)$", list("tTfF")),
    ("int", r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$", list("-+0123456789")),
    ("float", r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$", list("-+.0123456789")),
    ("merge", r"^(?:<<)$", ["<"]),  # `<<: *defaults` stays available
):
    Yaml12Loader.add_implicit_resolver(_CORE + _tag, re.compile(_pattern), _first)


def _construct_int(loader: SafeConstructor, node: yaml.ScalarNode) -> int:
    text = loader.construct_scalar(node)
    sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
    try:
        if digits.startswith("0o"):
            return sign * int(digits[2:], 8)
        if digits.startswith("0x"):
            return sign * int(digits[2:], 16)
        return sign * int(digits, 10)
    except ValueError:  # also for more than 4,300 digits (sys.get_int_max_str_digits)
        reason = f"{text!r} is not an integer" if len(text) <= 40 else f"a number of {len(text)} characters is too long to read"
        raise ConstructorError(None, None, reason, node.start_mark) from None


def _construct_float(loader: SafeConstructor, node: yaml.ScalarNode) -> float:
    text = loader.construct_scalar(node)
    special = {".inf": float("inf"), "+.inf": float("inf"), "-.inf": float("-inf"), ".nan": float("nan")}
    if text.lower() in special:
        return special[text.lower()]
    try:
        return float(text)
    except ValueError:
        raise ConstructorError(None, None, f"{text!r} is not a number", node.start_mark) from None


def _construct_bool(loader: SafeConstructor, node: yaml.ScalarNode) -> bool:
    text = loader.construct_scalar(node)
    if text.lower() not in ("true", "false"):
        raise ConstructorError(None, None, f"{text!r} is not true or false", node.start_mark)
    return text.lower() == "true"


Yaml12Loader.add_constructor(_CORE + "int", _construct_int)
Yaml12Loader.add_constructor(_CORE + "float", _construct_float)
Yaml12Loader.add_constructor(_CORE + "bool", _construct_bool)

# Tags a manifest may carry, written or implied; binary, timestamps, sets and custom tags mean nothing in one.
_ALLOWED_TAGS = frozenset(_CORE + name for name in ("str", "int", "float", "bool", "null", "seq", "map", "merge"))

# Plain scalars YAML 1.1 reads as numbers other than what YAML 1.2 (and this loader) reads.
_SEXAGESIMAL = re.compile(r"^[-+]?(?:[1-9][0-9_]*(?::[0-5]?[0-9])+|[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*)$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")


def _surprise(node: yaml.ScalarNode) -> str | None:
    """Why a plain scalar means different things to YAML 1.1 and 1.2 readers, or None."""
    if node.style is not None:  # quoted or block text is text to every reader
        return None
    text = node.value
    written = text if len(text) <= 40 else text[:20] + "…"
    if _SEXAGESIMAL.match(text):
        total: float = 0
        try:
            for part in text.lstrip("+-").replace("_", "").split(":"):
                total = total * 60 + (float(part) if "." in part else int(part))
            shown = f"{'-' if text.startswith('-') else ''}{total:g}" if isinstance(total, float) else str(-total if text.startswith("-") else total)
        except ValueError:  # more digits than int() reads
            shown = "a long number"
        shown = shown if len(shown) <= 40 else "a very large number"
        return f"{written} is {shown} in YAML 1.1 (base 60) but text in YAML 1.2; write the number, or quote it for text"
    if _LEADING_ZERO.match(text):
        return (
            f"{written} has a leading zero: YAML 1.1 reads it as octal (or text), YAML 1.2 as decimal; "
            "write it without the zero (0o... for octal), or quote it for text"
        )
    return None


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


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def expanded_size(root: yaml.Node, limit: int = MAX_NODES) -> int | None:
    """Nodes in the document once aliases are expanded, counted up to limit + 1; None if an alias contains itself.

    An alias is the node it names, shared, so the count is memoised per node: time linear in the
    document, whatever the expansion (a 360-byte document can expand to 9^9 nodes).
    """
    size: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being counted: the current path
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            open_.discard(id(node))
            size[id(node)] = min(limit + 1, 1 + sum(size[id(c)] for c in _children(node)))
            continue
        if id(node) in size:
            continue
        open_.add(id(node))
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                return None
            if id(child) not in size:
                stack.append((child, False))
    return size[id(root)]


def node_problems(root: yaml.Node) -> tuple[list[tuple[int, str, str]], bool]:
    """(line, dotted path, message) for duplicate keys, unsupported tags and 1.1/1.2 number surprises,
    and whether any of them (a tag) keeps the document from being constructed.

    Each node is visited once, so a mapping reused through aliases is reported at its first path.
    """
    blocking = False
    found: list[tuple[int, str, str]] = []
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())]
    while stack:
        node, path = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        line = node.start_mark.line + 1
        if node.tag not in _ALLOWED_TAGS:
            found.append((line, ".".join(path), f"the tag {node.tag} is not supported here; write plain values"))
            blocking = True
            continue
        if isinstance(node, yaml.ScalarNode):
            surprise = _surprise(node)
            if surprise:
                found.append((line, ".".join(path), surprise))
        elif isinstance(node, yaml.MappingNode):
            names: set[str] = set()
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else "<complex key>"
                if name in names:
                    found.append((key.start_mark.line + 1, ".".join(path + (name,)), f"duplicate key {name!r} (the later value would silently win)"))
                names.add(name)
                stack += [(value, path + (name,)), (key, path + (name,))]
        elif isinstance(node, yaml.SequenceNode):
            stack += [(item, path + (str(index),)) for index, item in enumerate(node.value)]
    return sorted(found), blocking


def _compose(text: str) -> yaml.Node | None:
    loader = Yaml12Loader(text)
    try:
        return loader.get_single_node()
    finally:
        loader.dispose()


def load_yaml(text: str) -> Any:
    """The data of a YAML document under the rules `parse_yaml` checks (YAML 1.2 scalars)."""
    loader = Yaml12Loader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_value(text: str) -> tuple[Any, str | None]:
    """A value written on its own (`4`, `true`, `[a, b]`, `{kind: lora}`) under the rules `parse_yaml`
    checks, and None; or (None, why it is refused). Empty text is null, as after `key:` in a file."""
    try:
        root = _compose(text)
    except yaml.YAMLError as exc:
        return None, _yaml_problem(exc, "").message
    except RecursionError:
        return None, "invalid YAML: nested too deeply"
    if root is None:
        return None, None
    size = expanded_size(root)
    if size is None or size > MAX_NODES:
        return None, f"invalid YAML: aliases (*name) expand past {MAX_NODES:,} values or refer to themselves"
    found, _ = node_problems(root)
    if found:
        return None, found[0][2]
    try:
        return load_yaml(text), None
    except yaml.YAMLError as exc:
        return None, _yaml_problem(exc, "").message
    except RecursionError:
        return None, "invalid YAML: nested too deeply"


def _yaml_problem(exc: yaml.YAMLError, shown: str) -> Problem:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    line = mark.line + 1 if mark is not None else 1
    reason = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return Problem(f"invalid YAML: {reason}", shown, line)


def parse_yaml(path: Path, text: str, what: str, defaulted_tags: frozenset[str] = frozenset()) -> tuple[Any, LineIndex | None, list[Problem]]:
    """(data, line index, problems) of a YAML mapping; index None when the text is not a usable mapping.

    `what` names the expected mapping in messages ("a mapping of manifest sections"). Nothing is
    constructed before the document's expanded size is known to be within MAX_NODES.
    """
    shown = str(path)
    too_deep = Problem("invalid YAML: nested too deeply", shown, 1)
    try:
        root = _compose(text)
    except yaml.YAMLError as exc:
        return None, None, [_yaml_problem(exc, shown)]
    except RecursionError:
        return None, None, [too_deep]
    if root is None:
        return None, None, [Problem(f"file is empty; expected {what}", shown, 1)]
    size = expanded_size(root)
    if size is None:
        return None, None, [Problem("invalid YAML: an alias (*name) refers to a node that contains it", shown, 1)]
    if size > MAX_NODES:
        return None, None, [Problem(f"aliases (*name) expand this document past {MAX_NODES:,} values; write it out plainly", shown, 1)]
    found, blocking = node_problems(root)
    problems = [Problem(message, shown, line, dotted or None) for line, dotted, message in found]
    if blocking:
        return None, None, problems  # constructing would fail on the tag or produce a value no field takes
    try:
        data = load_yaml(text)  # the index keeps `root` as written; construction flattens `<<` merges into its nodes
    except yaml.YAMLError as exc:
        return None, None, problems + [_yaml_problem(exc, shown)]
    except RecursionError:
        return None, None, problems + [too_deep]
    if data is None:
        return None, None, [Problem(f"file is empty; expected {what}", shown, 1)]
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        return None, None, [Problem(f"expected {what} at the top level, got {kind}", shown, root.start_mark.line + 1)]
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
