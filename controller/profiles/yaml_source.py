"""Strict YAML loading with line numbers, and readable validation errors.

Used for device profiles and any other operator-written YAML: every problem
becomes one line naming the file, the line (where YAML knows it), the field
path, what is wrong and what is allowed. Never a traceback.
"""

from __future__ import annotations

import hashlib
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

# Upper bound on a config file: profiles are a few kB; anything far larger is a mistake.
MAX_FILE_BYTES = 1_000_000
# Deepest nesting of mappings and lists in any of our files. The deepest real one
# (a profile's protocol map) is about 7 levels; PyYAML composes recursively and
# ends in RecursionError near 1000, so anything past this is refused, with its line.
MAX_YAML_DEPTH = 64


class SourceError(Exception):
    """A YAML file could not be loaded or validated; `problems` says why."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        super().__init__("\n".join(problems))


class _TooDeep(yaml.MarkedYAMLError):
    """Nesting beyond MAX_YAML_DEPTH."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and nesting deeper than MAX_YAML_DEPTH."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # Counted where the recursion happens, so it never reaches Python's limit.
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooDeep(None, None, f"nesting is deeper than {MAX_YAML_DEPTH} levels",
                               self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _construct_mapping(loader: _StrictLoader, node: yaml.MappingNode,
                       deep: bool = False) -> dict[Any, Any]:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})",
                key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


@dataclass
class YamlDocument:
    path: str
    data: dict[str, Any]
    root: yaml.Node
    sha256: str = ""
    """Hex SHA-256 of the exact bytes that were parsed."""
    real_path: str = ""
    """Absolute path with symlinks resolved."""

    def line_of(self, loc: tuple[str | int, ...], key: bool = False) -> int | None:
        """1-based line of the node at `loc` (of its key when `key`), or the nearest parent's."""
        node, line = self.root, self.root.start_mark.line + 1
        for part in loc:
            child = None
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if str(k.value) == str(part):
                        child, line = v, (k if key else v).start_mark.line + 1
                        break
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                    and 0 <= part < len(node.value):
                child = node.value[part]
                line = child.start_mark.line + 1
            if child is None:
                break
            node = child
        return line


def read_yaml_mapping(path: str | Path, what: str) -> YamlDocument:
    """Read a YAML file whose top level must be a mapping; SourceError otherwise."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SourceError(name, [f"{name}: cannot read {what}: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise SourceError(name, [f"{name}: file is {len(raw)} bytes; a {what} is at most "
                                 f"{MAX_FILE_BYTES}"])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(name, [f"{name}: not UTF-8 text (byte {exc.start})"]) from None
    if not text.strip():
        raise SourceError(name, [f"{name}: the file is empty; a {what} is a mapping of "
                                 "sections"])
    try:
        root, data = _load(text)
    except _TooDeep as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else None
        where = f"{name}:{line}" if line else name
        raise SourceError(name, [f"{where}: nesting is deeper than {MAX_YAML_DEPTH} levels; "
                                 f"a {what} is never nested that deep"]) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise SourceError(name, [f"{name}:{line}: character {one_line(chr(exc.character))} "
                                 "is not allowed in YAML"]) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{name}:{mark.line + 1}" if mark else name
        problem = exc.problem or str(exc)
        raise SourceError(name, [f"{where}: YAML syntax error: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise SourceError(name, [f"{name}: YAML error: {exc}"]) from None
    if data is None or root is None:
        raise SourceError(name, [f"{name}: the file is empty; a {what} is a mapping of "
                                 "sections"])
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise SourceError(name, [f"{name}:{root.start_mark.line + 1}: the top level is {kind}; "
                                 f"a {what} is a mapping of sections (key: value)"])
    return YamlDocument(name, data, root, hashlib.sha256(raw).hexdigest(),
                        os.path.realpath(path))


def _load(text: str) -> tuple[yaml.Node | None, Any]:
    """Compose once (depth-bounded) and construct the data from that same node tree."""
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        return root, None if root is None else loader.construct_document(root)
    finally:
        loader.dispose()


def validation_problems(doc: YamlDocument, err: ValidationError,
                        model: type[BaseModel]) -> list[str]:
    """One readable line per pydantic error, with file, line and field path."""
    out = []
    for e in err.errors(include_url=False):
        loc, parent = _clean_loc(e["loc"], model)
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(parent.model_fields) if parent else ""
            msg = f"unknown key '{loc[-1]}'" + (f" (allowed here: {allowed})" if allowed else "")
            line = doc.line_of(loc, key=True)
            out.append(_line(doc.path, line, loc[:-1], msg))
            continue
        if e["type"] == "missing":
            msg = "required field is missing"
        elif "input" in e and e["type"] not in ("value_error", "assertion_error"):
            msg = f"{msg} (got {_short(e['input'])})"
        if not loc and e["type"] == "value_error":
            for problem in msg.split("; "):
                path_text = problem.partition(": ")[0]
                sub = tuple(int(p) if p.isdigit() else p
                            for p in re.split(r"\.|\[|\]\.?", path_text) if p)
                out.append(_line(doc.path, doc.line_of(sub), (), problem))
            continue
        out.append(_line(doc.path, doc.line_of(loc), loc, msg))
    return out


def one_line(text: str) -> str:
    """Control characters shown escaped: a problem is always exactly one line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _line(path: str, line: int | None, loc: tuple[str | int, ...], msg: str) -> str:
    where = f"{path}:{line}" if line else path
    field = _dotted(loc)
    msg = one_line(msg)
    return f"{where}: {field}: {msg}" if field else f"{where}: {msg}"


def _dotted(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# repr() of a YAML alias bomb is exponential: bounded on depth and width.
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict = 2, 4, 4
_REPR.maxstring = _REPR.maxother = 40


def _short(value: Any) -> str:
    text = _REPR.repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _clean_loc(loc: tuple[Any, ...],
               model: type[BaseModel]) -> tuple[tuple[str | int, ...], type[BaseModel] | None]:
    """Drop pydantic's union tags from a location; also the model holding its last part."""
    out: list[str | int] = []
    node: Any = model
    parent: Any = None
    for part in loc:
        options = _options(node)
        if isinstance(part, str) and options and _is_tag(part, options):
            node = _pick(options, part)
            continue
        out.append(part)
        parent = node
        node = _child(node, part)
    return tuple(out), _as_model(parent)


def _as_model(node: Any) -> type[BaseModel] | None:
    node = _unwrap(node)
    if isinstance(node, type) and issubclass(node, BaseModel):
        return node
    options = [o for o in _options(node) if isinstance(o, type) and issubclass(o, BaseModel)]
    return options[0] if len(options) == 1 else None


def _options(node: Any) -> list[Any]:
    node = _unwrap(node)
    if isinstance(node, types.UnionType) or typing.get_origin(node) is typing.Union:
        return [_unwrap(a) for a in typing.get_args(node) if a is not type(None)]
    return []


def _unwrap(node: Any) -> Any:
    while typing.get_origin(node) is typing.Annotated:
        node = typing.get_args(node)[0]
    return node


def _is_tag(part: str, options: list[Any]) -> bool:
    return _pick(options, part) is not None or part in {
        getattr(o, "__name__", "") for o in options} or part.startswith(("list[", "dict["))


def _pick(options: list[Any], tag: str) -> Any:
    for o in options:
        if isinstance(o, type) and issubclass(o, BaseModel):
            fam = o.model_fields.get("family")
            if fam is not None and tag in typing.get_args(fam.annotation):
                return o
            if o.__name__ == tag:
                return o
    return None


def _child(node: Any, part: str | int) -> Any:
    node = _unwrap(node)
    opts = _options(node)
    if len(opts) == 1:
        node = opts[0]
    origin = typing.get_origin(node)
    if isinstance(node, type) and issubclass(node, BaseModel) and isinstance(part, str):
        f = node.model_fields.get(part)
        return f.annotation if f else None
    if origin in (list, dict):
        return _unwrap(typing.get_args(node)[-1])
    return None
