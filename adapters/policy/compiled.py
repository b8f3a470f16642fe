"""regorus' compiled program (the RVM), used only once it agrees with the interpreter.

The RVM is ~3-4x faster than the interpreter, but it has mishandled some Rego:
an undefined function value (an `else` chain ending undefined, a lookup that
misses) became the string "<undefined>" in the deny set instead of failing the
rule. The default policies are written to avoid those shapes, and every policy
set is checked before its program goes live: both engines decide a corpus
derived from the set's own data (every tier and maturity, unknown ones too,
against every configured action, model, tool server and annotation), and any
disagreement keeps that revision on the interpreter. At run time a result
carrying "<undefined>" is re-decided by the interpreter.
"""
from __future__ import annotations

import asyncio
import itertools
from typing import Any, Callable

import orjson
import regorus

from adapters.policy.bundle import PolicyFiles, error_text
from gateway.errors import PolicyCompileError

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


def _models(cfg: dict[str, Any]) -> list[Any]:
    names: list[Any] = [None, "no-such-model"]
    for t in (cfg.get("tiers") or {}).values():
        for p in (t.get("models") or []) if isinstance(t, dict) else []:
            if isinstance(p, str):
                names.append(p.replace("*", "x").replace("?", "x"))
    return names


def _tool_resources(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    servers: list[Any] = [None, "no-such-server", *(cfg.get("tool_servers") or {})]
    hints = [{}, {"readOnlyHint": True}, {"destructiveHint": True},
             {"readOnlyHint": True, "destructiveHint": True}]
    out: list[dict[str, Any]] = [{"type": "model", "name": "x"}]
    for server in servers:
        entry = (cfg.get("tool_servers") or {}).get(server) if isinstance(server, str) else None
        names: list[Any] = [None, "some_tool", *((entry or {}).get("tool_complexity") or {})]
        for name, ann in itertools.product(names, hints):
            out.append({"type": "tool", "name": name, "server": server, "annotations": ann})
    return out


def corpus(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Inputs covering what the set's data.json configures, plus unknown values of each field."""
    cfg = ((data.get("portcullis") or {}).get("config") or {}) if isinstance(data, dict) else {}
    tiers: list[Any] = [None, -1, 2.5, "1", *(int(k) for k in (cfg.get("tiers") or {}) if k.isdigit()), 99]
    maturities: list[Any] = [None, "no-such-maturity", *(cfg.get("maturity_order") or [])]
    actions = [None, "no.such.action", "tool.call", *(cfg.get("action_complexity") or {})]
    models, tools = _models(cfg), _tool_resources(cfg)
    server_resources = [{"type": t, "name": "x", "server": s}
                        for t in ("mcp_server", "resource", "prompt")
                        for s in (None, *(cfg.get("tool_servers") or {}))]
    def resources_for(action: Any) -> list[dict[str, Any]]:
        if isinstance(action, str) and action.startswith("tool."):
            return tools
        if isinstance(action, str) and action.startswith("mcp."):
            return server_resources
        return [{"type": "model", "name": m, "upstream": "u"} for m in models] + [{}]

    def doc(tier: Any, maturity: Any, action: Any, res: dict[str, Any]) -> dict[str, Any]:
        return {"agent": {"id": "check", "tier": tier, "maturity": maturity, "workspace": "w",
                          "labels": {}, "auth": "api_key"},
                "action": action, "resource": res, "request": {"api": "openai", "stream": False}}

    # Every agent against every action, with the action's resources in rotation; then every
    # action against every resource, with the agents in rotation: each pair of values meets.
    agents = list(itertools.product(tiers, maturities))
    docs = []
    for i, ((tier, maturity), action) in enumerate(itertools.product(agents, actions)):
        rs = resources_for(action)
        docs.append(doc(tier, maturity, action, rs[i % len(rs)]))
    for i, (action, res) in enumerate((a, r) for a in actions for r in resources_for(a)):
        tier, maturity = agents[(i * 7) % len(agents)]
        docs.append(doc(tier, maturity, action, res))
    return docs


def _same(a: Any, b: Any) -> bool:
    if not isinstance(a, dict) or not isinstance(b, dict):
        return a == b
    return (a.get("allow") == b.get("allow") and sorted(a.get("reasons") or []) == sorted(b.get("reasons") or [])
            and a.get("obligations") == b.get("obligations") and a.get("cache_ttl_s") == b.get("cache_ttl_s"))


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
