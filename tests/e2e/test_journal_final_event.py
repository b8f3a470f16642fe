"""A stream's last event reaches the client only after its row is in the audit journal.

The SDKs stop reading at the stream's last event (the openai SDK breaks at `data: [DONE]`, the
anthropic SDK at `message_stop`) without waiting for the end of the body, so the client has its
whole answer when that event arrives. A SIGKILL landing between that event and the last body
chunk would lose the row if it were journaled only before the last chunk. This spies on the ASGI
server's side of the gateway (real SDK clients, a real upstream server) and reads the journal file
when the message carrying the last event is sent.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import anthropic
import openai
import orjson
import pytest

from gateway.app import create_app
from gateway.audit.journal import journal_path
from gateway.settings import load_settings
from tests.support.harness import KEYS, PROVIDER_KEYS, LoopThread, gateway_config, serve
from tests.support.upstream_server import UpstreamServer

pytestmark = pytest.mark.timeout(120)
LAST_EVENTS = (b"data: [DONE]", b"event: message_stop")


def test_the_row_is_journaled_before_the_streams_last_event_is_sent(
        tmp_path: Path, loop_thread: LoopThread, upstream: UpstreamServer) -> None:
    settings = load_settings(gateway_config(tmp_path, upstream.url, audit__flush_interval_ms=3_600_000,
                                            audit__batch_size=10_000), PROVIDER_KEYS)
    journal = journal_path(settings.path(settings.audit.spool_path))
    seen: dict[str, dict[str, Any] | None] = {}  # request id -> its journaled row when its last event went out

    async def start() -> Any:
        app = create_app(settings)

        async def spy(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return await app(scope, receive, send)
            rid = None

            async def watch(message: dict[str, Any]) -> None:
                nonlocal rid
                if message["type"] == "http.response.start":
                    rid = dict(message["headers"]).get(b"x-request-id", b"").decode()
                elif any(e in message.get("body", b"") for e in LAST_EVENTS):
                    rows = [orjson.loads(line[1:]) for line in journal.read_bytes().rstrip(b"\0").splitlines()
                            if line.startswith(b"F")]
                    seen[rid] = next((r for r in rows if r["request_id"] == rid), None)
                await send(message)
            await app(scope, receive, watch)
        return await serve(spy, lifespan="on")

    served = loop_thread.run(start())
    try:
        oai = openai.OpenAI(base_url=served.url + "/v1", api_key=KEYS["architect"], max_retries=0)
        with oai.chat.completions.with_streaming_response.create(
                model="gpt-4o-mini", stream=True, messages=[{"role": "user", "content": "one two three"}]) as resp:
            assert "".join(c.choices[0].delta.content or "" for c in resp.parse() if c.choices)
            openai_id = resp.headers["x-request-id"]
        ant = anthropic.Anthropic(base_url=served.url, api_key=KEYS["architect"], max_retries=0)
        with ant.messages.with_streaming_response.create(
                model="claude-sonnet-4-6", max_tokens=64, stream=True,
                messages=[{"role": "user", "content": "one two three"}]) as resp:
            assert any(e.type == "message_stop" for e in resp.parse())
            anthropic_id = resp.headers["x-request-id"]
        for rid in (openai_id, anthropic_id):
            row = seen.get(rid)
            assert row is not None, f"{rid}: no row in the journal when its last event was sent"
            assert row["status"] == 200 and row["decision"] == "allow" and row["stream"] is True, row
            assert row["output_tokens"], row  # the stream's usage, known before its last event
    finally:
        loop_thread.run(served.stop())
