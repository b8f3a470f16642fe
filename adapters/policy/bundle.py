"""Reading a policy directory the way an OPA bundle is read.

`*.rego` files become modules; a `data.json` in directory `a/b/` is mounted at
`data.a.b`. The engine and the Rego test runner share this, so both see the
same set of files and data.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import regorus

from gateway.errors import PolicyCompileError


@dataclass(frozen=True, slots=True)
class PolicyFiles:
    modules: tuple[tuple[str, str], ...]  # (relative posix path, source text)
    data: dict[str, Any]  # every data.json merged at its mount point
    revision: str  # sha256 over the sorted (relative path, bytes) of the files read


def is_test_file(path: str) -> bool:
    return path.endswith("_test.rego")


def error_text(exc: BaseException) -> str:
    """regorus messages carry a Rust backtrace; keep only the located error."""
    text = str(exc).split("\nStack backtrace:", 1)[0].strip()
    return text or type(exc).__name__


def _files(policy_dir: Path, include_tests: bool) -> list[tuple[str, bytes]]:
    if not policy_dir.is_dir():
        raise PolicyCompileError(f"policy directory not found: {policy_dir}")
    out = []
    for path in policy_dir.rglob("*"):
        rel = path.relative_to(policy_dir)
        # Editors and git keep hidden files and folders here; they are never policy.
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        name = rel.as_posix()
        if path.name == "data.json" or (
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
    for name, content in files:
        # Length-prefixed so no two different file sets hash the same.
        for part in (name.encode(), content):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
        try:
            if name.endswith(".rego"):
                modules.append((name, content.decode("utf-8")))
            else:
                _mount(data, name, orjson.loads(content))
        except UnicodeDecodeError as e:
            raise PolicyCompileError(f"{name}: not UTF-8 text: {e}") from e
        except orjson.JSONDecodeError as e:
            raise PolicyCompileError(f"{name}: invalid JSON: {e}") from e
    if not modules:
        raise PolicyCompileError(f"no .rego files in {policy_dir}")
    return PolicyFiles(tuple(modules), data, digest.hexdigest())


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
