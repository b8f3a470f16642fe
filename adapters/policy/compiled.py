"""regorus' compiled program (the RVM), used only once it agrees with the interpreter.

The RVM is ~3-4x faster than the interpreter, but it has mishandled some Rego:
an undefined function value (an `else` chain ending undefined, a lookup that
misses) became the string "<undefined>" in the deny set instead of failing the
rule. The default policies are written to avoid those shapes, and every policy
set is checked before its program goes live: both engines decide a corpus
built from the set's own vocabulary, data and code, with no assumption about
how its data is laid out (see corpus()), and any disagreement keeps that
revision on the interpreter. At run time a result carrying "<undefined>" is
re-decided by the interpreter.
"""
from __future__ import annotations

import asyncio
import itertools
import re
from typing import Any, Callable

import orjson
import regorus

from adapters.policy import lint
from adapters.policy.bundle import PolicyFiles, error_text
from gateway.errors import PolicyCompileError
from gateway.types import Vocabulary

UNDEFINED = "<undefined>"


def build_vm(files: PolicyFiles, entry_point: str) -> regorus.Rvm:
    data = orjson.dumps(files.data).decode()
    try:
        program = regorus.Program.compile_from_modules(data, list(files.modules), [entry_point])
        vm = regorus.Rvm()
        vm.load_program(program)
        vm.set_data_json(data)  # the program does not carry the data
    except Exception as e:  # regorus raises RuntimeError; map whatever it raises
        raise PolicyCompileError(f"compiling for the RVM failed: {error_text(e)}") from None
    return vm


def run_vm(vm: regorus.Rvm, payload: str, entry_point: str) -> Any:
    vm.set_input_json(payload)
    out = vm.execute_entry_point(entry_point)
    return orjson.loads(out) if isinstance(out, str) else out


# Values an input field takes that match nothing in the set, or have the wrong type.
_ODD_TIERS: tuple[Any, ...] = (None, -1, 2.5, "1")
_ODD: tuple[Any, ...] = (None, 5)
# The MCP tool annotations the gateway passes on (its input vocabulary, not the policy's).
_HINTS: tuple[dict[str, Any], ...] = ({}, {"readOnlyHint": True}, {"destructiveHint": True},
                                      {"readOnlyHint": True, "destructiveHint": True})
# Identifier-like strings only: messages and format strings are never input values.
_TOKEN_LIKE = re.compile(r"[^\s%]{0,100}")


def _walk(node: Any, keys: set[str], values: set[str]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            keys.add(k)
            _walk(v, keys, values)
    elif isinstance(node, list):
        for v in node:
            _walk(v, keys, values)
    elif isinstance(node, str):
        values.add(node)


def _pools(files: PolicyFiles, vocab: Vocabulary) -> dict[str, list[Any]]:
    """Candidate values per input field, taken from the set's own data and code.

    No data layout is assumed: any string in the data (key or value) or in the
    modules may be an action, a model or a tool name; only strings the modules
    spell out are tried as resource types, only data keys as server names, and
    glob-like strings also become names they match (with dots, slashes, colons).
    """
    keys: set[str] = set()
    values: set[str] = set()
    _walk(files.data, keys, values)
    literals = {lit for _, src in files.modules for lit in lint.string_literals(src)}
    keep = lambda strings: sorted(x for x in strings if _TOKEN_LIKE.fullmatch(x))  # noqa: E731
    strings = keep(keys | values | literals)
    globbed = [x.replace("*", "x.1/y:z").replace("?", "q") for x in strings if "*" in x or "?" in x]
    tiers = sorted(vocab.tiers) if vocab.tiers is not None else []
    return {
        "tier": [*_ODD_TIERS, *tiers, max(tiers, default=0) + 1],
        "maturity": [None, "no-such-maturity", *(vocab.maturities or ())],
        "action": [*_ODD, *strings],
        "type": [None, *keep(literals)],
        "name": [*_ODD, *strings, *globbed],
        "server": [None, "no-such-server", *keep(keys)],
    }


def corpus(files: PolicyFiles, vocab: Vocabulary) -> list[dict[str, Any]]:
    """Inputs that make each value of a field meet each value of the fields it works with.

    Pairs: action with tier, maturity and resource type; resource type with name;
    server with annotations. The other fields rotate through their values, so
    each value of every field is tried in many contexts.
    """
    pools = _pools(files, vocab)
    counter = itertools.count()

    def doc(**fixed: Any) -> dict[str, Any]:
        i = next(counter)
        pick = {f: fixed[f] if f in fixed else vals[(i + len(f)) % len(vals)] for f, vals in pools.items()}
        hints = fixed.get("hints", _HINTS[i % len(_HINTS)])
        return {"agent": {"id": "check", "tier": pick["tier"], "maturity": pick["maturity"], "workspace": "w",
                          "labels": {}, "auth": "api_key"},
                "action": pick["action"],
                "resource": {"type": pick["type"], "name": pick["name"], "server": pick["server"],
                             "upstream": "u", "annotations": hints},
                "request": {"api": "openai", "stream": i % 2 == 1}}

    pairs = [("action", "tier"), ("action", "maturity"), ("action", "type"), ("type", "name")]
    docs = [doc(**{a: x, b: y}) for a, b in pairs for x in pools[a] for y in pools[b]]
    docs += [doc(server=s, hints=h) for s in pools["server"] for h in _HINTS]
    docs.append({})  # no fields at all
    return docs


def _same(a: Any, b: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a == b
    return (a.get("allow") == b.get("allow") and sorted(a.get("reasons") or []) == sorted(b.get("reasons") or [])
            and all(a.get(k) == b.get(k) for k in ("obligations", "cache_ttl_s", "violation", "approval")))


async def disagreements(interpret: Callable[[str], Any], compiled: Callable[[str], Any],
                        docs: list[dict[str, Any]], limit: int = 3) -> list[str]:
    """Inputs (as JSON) on which the two engines decide differently; yields to the loop as it goes."""
    found: list[str] = []
    for i, doc in enumerate(docs):
        payload = orjson.dumps(doc).decode()
        try:
            want = interpret(payload)
        except Exception:  # noqa: BLE001 - an input the interpreter cannot decide proves nothing
            continue
        try:
            got = compiled(payload)
        except Exception as e:  # noqa: BLE001
            got = f"error: {error_text(e)}"
        if not _same(want, got):
            found.append(payload)
            if len(found) >= limit:
                break
        if i % 64 == 63:
            await asyncio.sleep(0)  # a reload under traffic must not stall requests
    return found
