"""Tool decisions shared by the MCP, HTTP-tool and chat surfaces: one `tool.call` policy per tool."""
from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import orjson

from gateway.errors import GatewayError
from gateway.settings import ToolsSettings
from gateway.stages.policy import PolicyStage, policy_input
from gateway.tools.catalog import ToolCatalog
from gateway.tracing import RequestTrace
from gateway.types import Agent, Decision

log = logging.getLogger("portcullis.tools")
HTTP_SERVER = "http"  # the `server` of every plain HTTP tool in the policy input
_MCP_PREFIX = re.compile(r"^mcp__(.+?)__(.+)$")
# Arguments in a policy input are bounded: they are hashed, evaluated and audited per call.
MAX_ARGUMENT_BYTES = 16384


def tool_resource(server: str, name: str, annotations: dict[str, bool] | None,
                  arguments: dict[str, Any] | None = None) -> dict[str, Any]:
    """The tool.call resource; `arguments` only for a tool whose server opted it in to argument
    rules (contract 2): every other input stays argument-free, so its decision stays cached."""
    res = {"type": "tool", "name": name, "server": server, "annotations": dict(annotations or {})}
    if arguments is not None:
        res["arguments"] = arguments
    return res


def argument_problem(arguments: Any) -> str | None:
    """Why a call's arguments cannot go into a policy input (None when they can)."""
    if not isinstance(arguments, dict):
        return "tool arguments must be a JSON object"
    try:
        size = len(orjson.dumps(arguments))
    except TypeError:  # orjson.JSONEncodeError: e.g. an integer beyond 64 bits
        return "tool arguments must be plain JSON (integers within 64 bits)"
    if size > MAX_ARGUMENT_BYTES:
        return f"tool arguments are larger than {MAX_ARGUMENT_BYTES} bytes"
    return None


class ToolGovernor:
    """Decides tool.call for MCP and HTTP tools, with annotations the catalog has learned.

    `fetch_tools(server)` lists a server's tools into the catalog (the MCP client
    does it over its own session); it is injected so this module stays transport-free.
    """

    def __init__(self, settings: ToolsSettings, policy: PolicyStage, catalog: ToolCatalog,
                 fetch_tools: Callable[[str], Awaitable[None]] | None = None, *, approvals: bool = False) -> None:
        self.settings = settings
        self.policy = policy
        self.catalog = catalog
        self.fetch_tools = fetch_tools
        self.approvals = approvals  # the lifecycle runs: a call needing approval can be approved

    def reachable(self, d: Decision) -> bool:
        """Allowed, or allowed once an operator approves: such a tool is listed and may be offered
        to a model, or an agent that only calls listed tools could never ask (contract 6)."""
        return d.allow or (self.approvals and d.approval is not None)

    async def annotations(self, server: str, tool: str) -> dict[str, bool] | None:
        """A tool's hints: configured for HTTP tools, learned from tools/list for MCP servers."""
        if server == HTTP_SERVER:
            return self.http_annotations(tool) if tool in self.settings.http else None
        if self.fetch_tools is not None and self.catalog.should_fetch(server):
            try:
                await self.fetch_tools(server)
            except GatewayError as e:
                # Unknown hints count as none: the policy's stricter default applies.
                self.catalog.fetch_failed(server)
                log.warning("listing tools of %s failed: %s", server, e.message)
        return self.catalog.annotations(server, tool)

    async def refused_declared(self, agent: Agent, auth: str, api: str, body: dict[str, Any]) -> dict[str, str]:
        """Declared chat tools the agent may not call, each with its reasons; empty when none."""
        governed = {}
        for fn in declared_tools(body):
            target = self.resolve(fn)
            if target is not None:
                governed[fn] = target
        if not governed:
            return {}
        tools = [(server, tool, await self.annotations(server, tool)) for server, tool in governed.values()]
        decisions = await self.decide(agent, auth, api, tools)
        return {fn: "; ".join(d.reasons) or "denied by policy"
                for fn, (d, _, _) in zip(governed, decisions) if not self.reachable(d)}

    def policy_arguments(self, server: str, tool: str, raw: Any) -> tuple[dict[str, Any] | None, str | None]:
        """(the arguments a tool.call input carries, why they are refused): (None, None) for a tool
        with no argument rules, whose input stays as it was; absent arguments count as {}."""
        if (server, tool) not in self.policy.argument_rules():
            return None, None
        args = {} if raw is None else raw
        problem = argument_problem(args)
        return (None, problem) if problem is not None else (args, None)

    def http_annotations(self, name: str) -> dict[str, bool]:
        return dict(self.settings.http[name].annotations)

    async def decide(self, agent: Agent, auth: str, api: str,
                     tools: Iterable[tuple[str, str, dict[str, bool] | None]],
                     trace: RequestTrace | None = None, *,
                     arguments: Sequence[dict[str, Any] | None] = ()) -> list[tuple[Decision, str, dict]]:
        """(decision, input digest, input) per (server, tool, annotations), in one policy batch
        (a "policy" span of `trace` when the request is traced). `arguments`, when given, holds
        each call's policy_arguments(); listings and declared chat tools pass none."""
        tools = list(tools)
        args = list(arguments) or [None] * len(tools)
        docs = [policy_input(agent, auth, "tool.call", tool_resource(server, name, ann, arg),
                             {"api": api, "stream": False})
                for (server, name, ann), arg in zip(tools, args, strict=True)]
        if not docs:
            return []
        return [(d, dg, doc) for (d, dg), doc in zip(await self.policy.decide_many(docs, trace), docs)]

    def resolve(self, function_name: str) -> tuple[str, str] | None:
        """The governed (server, tool) a function name in a chat request stands for, if any."""
        s = self.settings
        target = s.chat_tool_names.get(function_name)
        if target is not None:
            server, dot, tool = target.partition(".")
            return (server, tool) if dot else (HTTP_SERVER, target)
        if function_name in s.http:
            return HTTP_SERVER, function_name
        m = _MCP_PREFIX.match(function_name)
        for server, tool in ((m.group(1), m.group(2)) if m else (None, None),
                             function_name.partition(".")[::2], function_name.partition("__")[::2]):
            if server and tool and server in s.servers:
                return server, tool
        return None


def declared_tools(body: dict[str, Any]) -> list[str]:
    """Function names a chat request offers the model (OpenAI chat and responses, Anthropic)."""
    names: list[str] = []
    for t in body.get("tools") or ():
        if not isinstance(t, dict):
            continue
        fn = t.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.append(fn["name"])  # OpenAI chat: {"type": "function", "function": {"name"}}
        elif isinstance(t.get("name"), str) and t.get("type") in (None, "function", "custom"):
            names.append(t["name"])  # Anthropic custom tools, OpenAI responses functions
    for fn in body.get("functions") or ():  # OpenAI's deprecated functions parameter
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            names.append(fn["name"])
    return names
