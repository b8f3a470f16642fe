"""Streams an upstream ends with FIN before their last event are errors, not answers.

The upstream frames its SSE bodies by closing the connection (no chunked encoding, no
Content-Length): aiohttp then reads a cut as a clean end, so only the protocol's last event
([DONE], response.completed, message_stop) tells a whole answer from a truncated one.
"""
from __future__ import annotations

from typing import Iterator

import anthropic
import openai
import pytest

from tests.support.harness import KEYS, Gateway, LoopThread, gateway_config
from tests.support.upstream_server import CloseDelimitedUpstream

WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture(scope="module")
def gw(loop_thread: LoopThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    up = CloseDelimitedUpstream()
    loop_thread.run(up.start())
    g = Gateway(loop_thread, gateway_config(tmp_path_factory.mktemp("cd"), up.url)).start()
    yield g
    g.stop()
    loop_thread.run(up.stop())


def oa(gw: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["architect"], max_retries=0)


def an(gw: Gateway) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gw.url, api_key=KEYS["architect"], max_retries=0)


def chat(gw: Gateway, model: str) -> tuple[str, list]:
    raw = oa(gw).chat.completions.with_raw_response.create(
        model=model, stream=True, messages=[{"role": "user", "content": WORDS}])
    return raw.headers["x-request-id"], list(raw.parse())


def responses(gw: Gateway, model: str) -> tuple[str, list]:
    raw = oa(gw).responses.with_raw_response.create(model=model, stream=True, input=WORDS)
    return raw.headers["x-request-id"], list(raw.parse())


def messages(gw: Gateway, model: str) -> tuple[str, list]:
    with an(gw).messages.stream(model=model, max_tokens=200,
                                messages=[{"role": "user", "content": WORDS}]) as s:
        events = list(s)
        return s.response.headers["x-request-id"], events


CASES = [(chat, openai.APIError), (responses, openai.APIError), (messages, anthropic.APIStatusError)]


@pytest.mark.parametrize("call,raised", CASES, ids=["chat", "responses", "messages"])
def test_a_stream_cut_before_its_last_event_raises_and_is_recorded(gw, call, raised):
    with pytest.raises(raised) as e:
        call(gw, "fault-cut")
    assert "before its final event" in str(e.value)
    body = e.value.body  # openai: the error object; anthropic: the whole error event
    row = gw.audit_row(body["request_id"])
    assert row["decision"] == "allow" and row["status"] == 200
    assert "before its final event" in row["error"]


@pytest.mark.parametrize("call,raised", CASES, ids=["chat", "responses", "messages"])
def test_a_whole_close_delimited_stream_ends_cleanly(gw, call, raised):
    rid, events = call(gw, "fault-whole")
    assert len(events) > 3
    row = gw.audit_row(rid)
    assert row["decision"] == "allow" and row["status"] == 200 and row["error"] is None
    assert row["output_tokens"], "usage was read from the stream"
