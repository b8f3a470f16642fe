"""An MCP server for the official conformance suite's server scenarios (mcp 2.x SDK).

The suite (`@modelcontextprotocol/conformance`, run by tests/support/mcp_conformance.py)
names the tools, resources and prompts it calls; this server has each of them:

  tools      test_simple_text, test_image_content, test_audio_content,
             test_embedded_resource, test_multiple_content_types, test_error_handling,
             test_tool_with_logging (3 log notifications), test_tool_with_progress
             (0, 50, 100 of 100), test_sampling, test_elicitation,
             test_elicitation_sep1034_defaults, test_elicitation_sep1330_enums,
             test_reconnection (closes its SSE stream mid-call; resumed by Last-Event-ID),
             json_schema_2020_12_tool (a 2020-12 inputSchema with $defs)
  resources  test://static-text, test://static-binary, test://watched-resource
             (subscribable), template test://template/{id}/data
  prompts    test_simple_prompt, test_prompt_with_arguments,
             test_prompt_with_embedded_resource, test_prompt_with_image
  also       logging/setLevel, completion/complete, resources/(un)subscribe

Server requests (sampling, elicitation) go on the tool call's own stream, as the
SDK's reference server sends them: the suite's client opens its GET stream without
waiting for it, so requests sent there can beat it and be dropped, directly as
through any proxy. With back_channel="session" test_sampling and test_elicitation
send theirs on the session's GET stream instead (tests of stream ordering).
One more tool serves the gateway's own tests: update_watched_resource sends
notifications/resources/updated on the GET stream to subscribers.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
from dataclasses import dataclass, field
from typing import Any, Iterator, Literal

from mcp import types
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.prompts.base import UserMessage
from mcp.server.mcpserver.tools.base import Tool
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.message import ServerMessageMetadata

from tests.support.harness import LoopThread, Served, serve
from tests.support.mcp_orders_server import stop_mcp_server

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_EMPTY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="
WATCHED = "test://watched-resource"
BackChannel = Literal["request", "session"]  # where server requests go: the call's stream or the GET one
BACK_CHANNEL_WAIT_S = 10.0  # a server request the client never sees fails the tool instead of hanging it

ELICIT_CONTACT = {"type": "object", "required": ["username", "email"], "properties": {
    "username": {"type": "string", "description": "User's response"},
    "email": {"type": "string", "description": "User's email address"}}}
ELICIT_DEFAULTS = {"type": "object", "properties": {  # SEP-1034: a default for every primitive type
    "name": {"type": "string", "default": "John Doe"},
    "age": {"type": "integer", "default": 30},
    "score": {"type": "number", "default": 95.5},
    "status": {"type": "string", "enum": ["active", "inactive", "pending"], "default": "active"},
    "verified": {"type": "boolean", "default": True}}}
_CHOICES = [{"const": f"value{i}", "title": f"Option {i}"} for i in (1, 2, 3)]
ELICIT_ENUMS = {"type": "object", "properties": {  # SEP-1330: the five enum shapes
    "untitledSingle": {"type": "string", "enum": ["option1", "option2", "option3"]},
    "titledSingle": {"type": "string", "oneOf": _CHOICES},
    "legacyEnum": {"type": "string", "enum": ["opt1", "opt2", "opt3"],
                   "enumNames": ["Option One", "Option Two", "Option Three"]},
    "untitledMulti": {"type": "array", "items": {"type": "string", "enum": ["option1", "option2", "option3"]}},
    "titledMulti": {"type": "array", "items": {"anyOf": _CHOICES}}}}
SCHEMA_2020_12 = {
    "$schema": "https://json-schema.org/draft/2020-12/schema", "type": "object",
    "$defs": {"address": {"type": "object", "properties": {"street": {"type": "string"},
                                                            "city": {"type": "string"}}}},
    "properties": {"name": {"type": "string"}, "address": {"$ref": "#/$defs/address"}},
    "additionalProperties": False}


class MemoryEventStore(EventStore):
    """Every event of every stream, so a client that lost a stream resumes it by Last-Event-ID."""

    def __init__(self) -> None:
        self._events: list[tuple[str, str, types.JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: types.JSONRPCMessage | None) -> str:
        event_id = str(len(self._events) + 1)
        self._events.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream = next((s for s, e, _ in self._events if e == last_event_id), None)
        if stream is None:
            return None
        for s, e, message in self._events[int(last_event_id):]:
            if s == stream and message is not None:
                await send_callback(EventMessage(message, e))
        return stream


async def _client_request(ctx: Context, request: Any, result_type: type, related: bool = True) -> Any:
    meta = ServerMessageMetadata(related_request_id=ctx.request_id) if related else None
    return await ctx.session.send_request(request, result_type, request_read_timeout_seconds=BACK_CHANNEL_WAIT_S,
                                          metadata=meta)


async def _elicit(ctx: Context, message: str, schema: dict[str, Any], related: bool) -> str:
    request = types.ElicitRequest(params=types.ElicitRequestFormParams(message=message, requested_schema=schema))
    result = await _client_request(ctx, request, types.ElicitResult, related)
    return f"action={result.action}, content={json.dumps(result.content)}"


def _add_tools(mcp: MCPServer, subscribed: set[str], on_call_stream: bool) -> None:
    @mcp.tool(description="Returns one text block.")
    def test_simple_text() -> str:
        return "This is a simple text response for testing."

    @mcp.tool(description="Returns a PNG image.")
    def test_image_content() -> list[types.ImageContent]:
        return [types.ImageContent(type="image", data=PNG_1PX, mime_type="image/png")]

    @mcp.tool(description="Returns a WAV clip.")
    def test_audio_content() -> list[types.AudioContent]:
        return [types.AudioContent(type="audio", data=WAV_EMPTY, mime_type="audio/wav")]

    @mcp.tool(description="Returns an embedded text resource.")
    def test_embedded_resource() -> list[types.EmbeddedResource]:
        return [types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
            uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."))]

    @mcp.tool(description="Returns text, an image and an embedded resource.")
    def test_multiple_content_types() -> list[types.TextContent | types.ImageContent | types.EmbeddedResource]:
        return [types.TextContent(type="text", text="Multiple content types test:"),
                types.ImageContent(type="image", data=PNG_1PX, mime_type="image/png"),
                types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                    uri="test://mixed-content-resource", mime_type="application/json",
                    text='{"test": "data", "value": 123}'))]

    @mcp.tool(description="Always fails with isError.")
    def test_error_handling() -> str:
        raise ToolError("This tool intentionally returns an error for testing")

    @mcp.tool(description="Sends three log notifications while it runs.")
    async def test_tool_with_logging(ctx: Context) -> str:
        for text in ("Tool execution started", "Tool processing data", "Tool execution completed"):
            note = types.LoggingMessageNotification(params=types.LoggingMessageNotificationParams(
                level="info", data=text))
            await ctx.session.send_notification(note, related_request_id=ctx.request_id)
            await asyncio.sleep(0.05)
        return "Tool with logging executed successfully"

    @mcp.tool(description="Reports progress 0, 50 and 100 of 100.")
    async def test_tool_with_progress(ctx: Context) -> str:
        for step in (0, 50, 100):
            await ctx.report_progress(step, 100, f"Completed step {step} of 100")
            await asyncio.sleep(0.05)
        return str((ctx.request_context.meta or {}).get("progressToken", 0))

    @mcp.tool(description="Asks the client's LLM to answer the prompt.")
    async def test_sampling(prompt: str, ctx: Context) -> str:
        request = types.CreateMessageRequest(params=types.CreateMessageRequestParams(
            messages=[types.SamplingMessage(role="user", content=types.TextContent(type="text", text=prompt))],
            max_tokens=100))
        result = await _client_request(ctx, request, types.CreateMessageResult, related=on_call_stream)
        return f"LLM response: {getattr(result.content, 'text', 'No response')}"

    @mcp.tool(description="Asks the user for a username and an email.")
    async def test_elicitation(message: str, ctx: Context) -> str:
        return "User response: " + await _elicit(ctx, message, ELICIT_CONTACT, related=on_call_stream)

    @mcp.tool(description="Elicits with a default for every primitive type (SEP-1034).")
    async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
        return "Elicitation completed: " + await _elicit(ctx, "Please provide user information",
                                                         ELICIT_DEFAULTS, related=True)

    @mcp.tool(description="Elicits with the five enum schema shapes (SEP-1330).")
    async def test_elicitation_sep1330_enums(ctx: Context) -> str:
        return "Elicitation completed: " + await _elicit(ctx, "Please select values", ELICIT_ENUMS, related=True)

    @mcp.tool(description="Closes its SSE stream mid-call; the result comes on the resumed stream (SEP-1699).")
    async def test_reconnection(ctx: Context) -> str:
        await ctx.close_sse_stream()
        await asyncio.sleep(0.2)  # the client reconnects with Last-Event-ID meanwhile
        return "Reconnection test completed"

    @mcp.tool(description="Tells subscribers that test://watched-resource changed (on the GET stream).")
    async def update_watched_resource(ctx: Context) -> str:
        if WATCHED in subscribed:
            await ctx.session.send_resource_updated(WATCHED)
        return f"notified {len(subscribed & {WATCHED})} subscription(s)"



def _add_content(mcp: MCPServer) -> None:
    @mcp.resource("test://static-text", name="static_text", description="A static text resource.",
                  mime_type="text/plain")
    def static_text() -> str:
        return "This is the content of the static text resource."

    @mcp.resource("test://static-binary", name="static_binary", description="A static PNG image.",
                  mime_type="image/png")
    def static_binary() -> bytes:
        return base64.b64decode(PNG_1PX)

    @mcp.resource(WATCHED, name="watched_resource", description="A resource to subscribe to.",
                  mime_type="text/plain")
    def watched() -> str:
        return "Watched resource content"

    @mcp.resource("test://template/{id}/data", name="template_data", description="A templated resource.",
                  mime_type="application/json")
    def template_data(id: str) -> str:  # noqa: A002 - the template's parameter name
        return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})

    @mcp.prompt(description="A prompt without arguments.")
    def test_simple_prompt() -> list[UserMessage]:
        return [UserMessage("This is a simple prompt for testing.")]

    @mcp.prompt(description="A prompt with two required arguments.")
    def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
        return [UserMessage(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'")]

    @mcp.prompt(description="A prompt that embeds a resource.")
    def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:  # noqa: N803 - the suite's name
        return [UserMessage(types.EmbeddedResource(type="resource", resource=types.TextResourceContents(
                    uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing."))),
                UserMessage("Please process the embedded resource above.")]

    @mcp.prompt(description="A prompt with an image.")
    def test_prompt_with_image() -> list[UserMessage]:
        return [UserMessage(types.ImageContent(type="image", data=PNG_1PX, mime_type="image/png")),
                UserMessage("Please analyze the image above.")]

    @mcp.completion()
    async def complete(ref: Any, argument: types.CompletionArgument, context: Any) -> types.Completion:
        return types.Completion(values=[], total=0, has_more=False)


def _add_handlers(mcp: MCPServer, subscribed: set[str]) -> None:
    """logging/setLevel and resource subscriptions: lowlevel handlers (MCPServer has no decorator)."""
    server = mcp._lowlevel_server  # noqa: SLF001 - MCPServer exposes no public way to add these

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        return types.EmptyResult()

    async def subscribe(ctx: Any, params: types.SubscribeRequestParams) -> types.EmptyResult:
        subscribed.add(str(params.uri))
        return types.EmptyResult()

    async def unsubscribe(ctx: Any, params: types.UnsubscribeRequestParams) -> types.EmptyResult:
        subscribed.discard(str(params.uri))
        return types.EmptyResult()

    server.add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
    server.add_request_handler("resources/subscribe", types.SubscribeRequestParams, subscribe)
    server.add_request_handler("resources/unsubscribe", types.UnsubscribeRequestParams, unsubscribe)


def _schema_2020_12_tool() -> Tool:
    """A tool whose inputSchema is given as is: the suite checks that $schema and $defs survive."""
    def accept(name: str | None = None, address: dict[str, Any] | None = None) -> str:
        return "ok"

    tool = Tool.from_function(accept, name="json_schema_2020_12_tool",
                              description="Tool with JSON Schema 2020-12 features")
    return tool.model_copy(update={"parameters": SCHEMA_2020_12})


def build_server(back_channel: BackChannel = "request") -> MCPServer:
    """A fresh conformance MCPServer (its session manager runs only once)."""
    mcp = MCPServer("mcp-conformance-test-server", version="1.0.0", log_level="WARNING",
                    tools=[_schema_2020_12_tool()])
    subscribed: set[str] = set()
    _add_tools(mcp, subscribed, on_call_stream=back_channel == "request")
    _add_content(mcp)
    _add_handlers(mcp, subscribed)
    return mcp


@dataclass
class ConformanceServer:
    """The conformance server under uvicorn on a free 127.0.0.1 port; `url` is its MCP endpoint.

    `get_delay_s` holds each GET that long before the SDK sees it (a stream slow to
    open); `events` records (loop time, what, session id): each request's arrival by
    its method, and "GET answered" when a GET's response headers go out.
    """

    back_channel: BackChannel = "request"
    retry_ms: int = 100  # SSE retry hint: how soon a client resumes a stream the server closed
    get_delay_s: float = 0.0
    events: list[tuple[float, str, str | None]] = field(default_factory=list)
    _served: Served | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        assert self._served is not None, "start() the server first"
        return f"{self._served.url}/mcp"

    async def start(self) -> None:
        app = build_server(self.back_channel).streamable_http_app(event_store=MemoryEventStore(),
                                                                  retry_interval=self.retry_ms)
        self._served = await serve(self._observed(app), lifespan="on")

    async def stop(self) -> None:
        await stop_mcp_server(self._served)
        self._served = None

    @contextlib.contextmanager
    def running(self, loop: LoopThread) -> Iterator[ConformanceServer]:
        """The server, started on the loop thread for the block."""
        loop.run(self.start())
        try:
            yield self
        finally:
            loop.run(self.stop())

    def _observed(self, app: Any) -> Any:
        async def observed(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                session = dict(scope["headers"]).get(b"mcp-session-id", b"").decode() or None
                self._note(scope["method"], session)
                if scope["method"] == "GET":
                    await asyncio.sleep(self.get_delay_s)
                    send = self._noting_headers(send, session)
            await app(scope, receive, send)
        return observed

    def _noting_headers(self, send: Any, session: str | None) -> Any:
        async def noting(message: Any) -> None:
            if message["type"] == "http.response.start":
                self._note("GET answered", session)
            await send(message)
        return noting

    def _note(self, what: str, session: str | None) -> None:
        self.events.append((asyncio.get_running_loop().time(), what, session))
