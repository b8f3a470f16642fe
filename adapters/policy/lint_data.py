"""The data side of `policy check`: data.json against its schema, the config the
gateway parses, and the actions the modules name, each problem at its line.

Python's json module keeps no positions: json-source-map gives the line of every key
and array item by its JSON pointer.
"""
from __future__ import annotations

import bisect
import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
from json_source_map import calculate

from adapters.policy.bundle import PolicyFiles, is_test_file
from gateway.errors import PolicyCompileError

Path_ = tuple[Any, ...]

# What the gateway calls an action (DESIGN.md contract 2): `llm.chat`, `tool.call`, `mcp.resources.read`.
_ACTION = re.compile(r"(?:llm|tool|mcp)(?:\.[a-z][a-z0-9_]*)+")
_LITERAL = re.compile(r'"(?:[^"\\\n]|\\.)*"|`[^`]*`|#[^\n]*')
# A config error names its place as a dotted data path first: `data.portcullis.config.tiers must ...`.
_DATA_PATH = re.compile(r"data((?:\.[A-Za-z0-9_-]+)+)")


def _line_of(starts: list[int], pos: int) -> int:
    """1-based line of `pos`, given the offsets at which lines start."""
    return bisect.bisect_right(starts, pos)


def json_lines(text: str) -> dict[str, int]:
    """1-based line of every value by its JSON pointer (json-source-map): an object member's
    is its key's line, an array item's where the item starts, the root's "" where it starts."""
    out = {}
    for pointer, entry in calculate(text).items():
        start = entry.key_start or entry.value_start
        out[pointer] = start.line + 1
    return out


def _pointer(path: Path_) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in path)


def locate(lines: dict[str, int], path: Path_) -> int | None:
    """The line of the deepest existing prefix of path (a missing key is reported at its parent)."""
    for n in range(len(path), -1, -1):
        line = lines.get(_pointer(path[:n]))
        if line is not None:
            return line
    return None


def schema_problems(files: PolicyFiles, problem: Callable[[str, int | None, str], Any]) -> list[Any]:
    """Each data.json checked against the data.schema.json beside it."""
    documents, texts = dict(files.documents), dict(files.texts)
    problems = []
    for schema_name, schema in files.schemas:
        data_name = schema_name.removesuffix("data.schema.json") + "data.json"
        try:
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
        except jsonschema.SchemaError as e:
            problems.append(problem(schema_name, None, f"not a valid JSON Schema: {e.message}"))
            continue
        if data_name not in documents:
            problems.append(problem(schema_name, None, f"no {data_name} beside this schema"))
            continue
        lines = json_lines(texts[data_name]) if data_name in texts else {}
        for error in sorted(cls(schema).iter_errors(documents[data_name]), key=lambda e: list(map(str, e.path))):
            where = "/".join(str(p) for p in error.path) or "(root)"
            problems.append(problem(data_name, locate(lines, tuple(error.path)), f"{where}: {error.message}"))
    return problems


def config_problem(files: PolicyFiles, error: PolicyCompileError) -> tuple[str, int | None]:
    """The data.json and line a config error's dotted path names, else ("data", None)."""
    m = _DATA_PATH.match(str(error))
    keys = tuple(m.group(1)[1:].split(".")) if m else ()
    for name, text in files.texts:
        mount = tuple(name.split("/")[:-1])
        if keys[:len(mount)] == mount and (keys or not mount):
            return name, locate(json_lines(text), keys[len(mount):])
    return "data", None


def known_actions(data: dict[str, Any]) -> frozenset[str] | None:
    """The actions the set's data names, or None when it declares no action_complexity."""
    cfg = (data.get("portcullis") or {}).get("config") if isinstance(data.get("portcullis"), dict) else None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("action_complexity"), dict):
        return None
    content = cfg.get("mcp_server_content_actions")
    return frozenset({*cfg["action_complexity"], "tool.call", *(content if isinstance(content, list) else ())})


def action_problems(files: PolicyFiles, problem: Callable[[str, int | None, str], Any]) -> list[Any]:
    """A string literal that looks like an action but is no action the data knows: a
    typo (`llm.chatt`) would silently never match, so the rule it guards never applies."""
    known = known_actions(files.data)
    if known is None:
        return []
    problems = []
    for name, source in files.modules:
        if is_test_file(name):
            continue  # tests may probe unknown actions on purpose
        starts = [0] + [i + 1 for i, c in enumerate(source) if c == "\n"]
        for m in _LITERAL.finditer(source):
            token = m.group()
            if token.startswith("#"):
                continue
            try:
                literal = token[1:-1] if token.startswith("`") else json.loads(token)
            except ValueError:
                continue
            if _ACTION.fullmatch(literal) and literal not in known:
                problems.append(problem(name, _line_of(starts, m.start()),
                                        f'unknown action "{literal}": not in data.portcullis.config.'
                                        "action_complexity, mcp_server_content_actions or tool.call"))
    return problems
