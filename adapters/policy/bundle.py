"""Reading a policy directory the way an OPA bundle is read.

`*.rego` files become modules; a `data.json` in directory `a/b/` is mounted at
`data.a.b`, and a `data.schema.json` beside it is that file's JSON Schema (see
lint.py). The engine, the Rego test runner and `policy check` share this, so
all see the same set of files and data.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import orjson
import regorus

from gateway.errors import PolicyCompileError
from gateway.lifecycle.model import LifecycleRules
from gateway.lifecycle.rules import parse_rules
from gateway.types import Vocabulary

SCHEMA_FILE = "data.schema.json"
_TIER_KEY = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True, slots=True)
class PolicyFiles:
    modules: tuple[tuple[str, str], ...]  # (relative posix path, source text)
    data: dict[str, Any]  # every data.json merged at its mount point
    revision: str  # sha256 over the sorted (relative path, bytes) of the files read
    documents: tuple[tuple[str, Any], ...] = ()  # (relative path, parsed) of each data.json
    schemas: tuple[tuple[str, Any], ...] = ()  # (relative path, parsed) of each data.schema.json
    texts: tuple[tuple[str, str], ...] = ()  # (relative path, text) of each data.json, to name lines


def is_test_file(path: str) -> bool:
    return path.endswith("_test.rego")


def error_text(exc: BaseException) -> str:
    """regorus messages carry a Rust backtrace; keep only the located error."""
    text = str(exc).split("\nStack backtrace:", 1)[0].strip()
    return text or type(exc).__name__


def _walk(policy_dir: Path) -> Iterator[Path]:
    """Every non-hidden file below `policy_dir`, through symlinked directories: a ConfigMap
    volume's top-level entries are links (`portcullis -> ..data/portcullis`), which
    `Path.rglob` would not enter. Editors and git keep hidden files and folders here (and
    the volume its `..data` internals); they are never policy."""
    seen: set[str] = set()
    for top, dirs, names in os.walk(policy_dir, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # a link cycle, or two links to one directory
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(top, name)
            if not name.startswith(".") and path.is_file():
                yield path


def _files(policy_dir: Path, include_tests: bool) -> list[tuple[str, bytes]]:
    if not policy_dir.is_dir():
        raise PolicyCompileError(f"policy directory not found: {policy_dir}")
    out = []
    for path in _walk(policy_dir):
        name = path.relative_to(policy_dir).as_posix()
        if path.name in ("data.json", SCHEMA_FILE) or (
                path.suffix == ".rego" and (include_tests or not is_test_file(name))):
            out.append((name, path.read_bytes()))
    return sorted(out)


def _mount(data: dict[str, Any], rel: str, doc: Any) -> None:
    keys = rel.split("/")[:-1]  # the directories above data.json
    if not keys:
        if not isinstance(doc, dict):
            raise PolicyCompileError(f"{rel}: the root data.json must hold an object")
        _merge(data, doc, rel)
        return
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise PolicyCompileError(f"{rel}: data path {'.'.join(keys)} collides with a value")
    last = keys[-1]
    if isinstance(doc, dict) and isinstance(node.get(last, {}), dict):
        _merge(node.setdefault(last, {}), doc, rel)
    elif last in node:
        raise PolicyCompileError(f"{rel}: data path {'.'.join(keys)} is already set")
    else:
        node[last] = doc


def _merge(into: dict[str, Any], doc: dict[str, Any], rel: str) -> None:
    for key, value in doc.items():
        if key not in into:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            _merge(into[key], value, rel)
        else:
            raise PolicyCompileError(f"{rel}: data key {key!r} is set by two data files")


def collect(policy_dir: Path, *, include_tests: bool = False) -> PolicyFiles:
    """Read the directory (plain file IO, so it may run off the event loop)."""
    files = _files(policy_dir, include_tests)
    digest = hashlib.sha256()
    modules: list[tuple[str, str]] = []
    data: dict[str, Any] = {}
    documents: list[tuple[str, Any]] = []
    schemas: list[tuple[str, Any]] = []
    texts: list[tuple[str, str]] = []
    for name, content in files:
        # Length-prefixed so no two different file sets hash the same.
        for part in (name.encode(), content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        try:
            if name.endswith(".rego"):
                modules.append((name, content.decode("utf-8")))
            elif name.endswith(SCHEMA_FILE):
                schemas.append((name, orjson.loads(content)))
            else:
                documents.append((name, orjson.loads(content)))
                texts.append((name, content.decode("utf-8")))
                _mount(data, name, orjson.loads(content))  # its own copy: merging mutates it
        except UnicodeDecodeError as e:
            raise PolicyCompileError(f"{name}: not UTF-8 text: {e}") from e
        except orjson.JSONDecodeError as e:
            raise PolicyCompileError(f"{name}: invalid JSON: {e}") from e
    if not modules:
        raise PolicyCompileError(f"no .rego files in {policy_dir}")
    return PolicyFiles(tuple(modules), data, digest.hexdigest(), tuple(documents), tuple(schemas),
                       tuple(texts))


def vocabulary(data: dict[str, Any]) -> Vocabulary:
    """The tiers (keys of data.portcullis.config.tiers) and maturities (its maturity_order).

    A set whose data has neither declares no vocabulary; a malformed one is a load error.
    """
    cfg = data.get("portcullis")
    cfg = cfg.get("config") if isinstance(cfg, dict) else None
    if not isinstance(cfg, dict):
        return Vocabulary()
    tiers, order = cfg.get("tiers"), cfg.get("maturity_order")
    if tiers is not None and not (isinstance(tiers, dict) and tiers
                                  and all(_TIER_KEY.fullmatch(k) for k in tiers)):
        raise PolicyCompileError("data.portcullis.config.tiers must be an object keyed by tier numbers 0, 1, ...")
    if order is not None and not (isinstance(order, list) and order and len(set(map(str, order))) == len(order)
                                  and all(isinstance(m, str) and m for m in order)):
        raise PolicyCompileError("data.portcullis.config.maturity_order must list distinct maturity names, lowest first")
    return Vocabulary(None if tiers is None else frozenset(map(int, tiers)),
                      None if order is None else tuple(order))


def tier_obligations(data: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """Each tier's obligations in the data (data.portcullis.config.tiers[t].obligations): the
    limits of a request admitted without a decision (the emergency bypass)."""
    cfg = data.get("portcullis")
    cfg = cfg.get("config") if isinstance(cfg, dict) else None
    tiers = cfg.get("tiers") if isinstance(cfg, dict) else None
    if not isinstance(tiers, dict):
        return {}
    return {int(k): dict(v["obligations"]) for k, v in tiers.items()
            if _TIER_KEY.fullmatch(str(k)) and isinstance(v, dict) and isinstance(v.get("obligations"), dict)}


def argument_rules(data: dict[str, Any]) -> frozenset[tuple[str, str]]:
    """The (server, tool) pairs whose tool.call input carries the call's arguments: those a
    policy author opted in (data.portcullis.config.tool_servers[server].argument_rules[tool]
    is true). Every other tool keeps its argument-free, cached decision."""
    cfg = data.get("portcullis")
    cfg = cfg.get("config") if isinstance(cfg, dict) else None
    servers = cfg.get("tool_servers") if isinstance(cfg, dict) else None
    if not isinstance(servers, dict):
        return frozenset()
    return frozenset((server, tool) for server, entry in servers.items() if isinstance(entry, dict)
                     and isinstance(rules := entry.get("argument_rules"), dict)
                     for tool, on in rules.items() if on is True)


def lifecycle_rules(data: dict[str, Any]) -> LifecycleRules:
    """The set's lifecycle thresholds (data.portcullis.config.lifecycle); PolicyCompileError if malformed."""
    cfg = data.get("portcullis")
    return parse_rules(cfg.get("config") if isinstance(cfg, dict) else None)


def build_engine(files: PolicyFiles) -> regorus.Engine:
    """Parse the modules and load the data; the Engine is bound to the calling thread."""
    engine = regorus.Engine()
    problem = None
    for name, source in files.modules:
        try:
            engine.add_policy(name, source)
        except Exception as e:  # regorus raises RuntimeError; map whatever it raises
            problem = error_text(e)
            break
    if problem is None:
        try:
            engine.add_data_json(orjson.dumps(files.data).decode())
        except Exception as e:
            problem = f"data: {error_text(e)}"
    if problem is not None:
        # Raised without chaining so no traceback frame keeps the Engine alive: it
        # must be freed here, on its own thread, not by a later GC pass elsewhere.
        del engine
        raise PolicyCompileError(problem)
    return engine
