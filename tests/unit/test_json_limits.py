"""server.max_json_depth: one limit the parser enforces and the writer can always meet."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from gateway.errors import InvalidRequest
from gateway.http import headers_dict
from gateway.settings import ConfigError, load_settings
from gateway.surfaces import openai
from gateway.surfaces.base import canonical, too_deep
from tests.support.harness import gateway_config


def nested_raw(levels: int) -> bytes:
    return b"[" * levels + b"1" + b"]" * levels


@pytest.mark.parametrize("levels, deep", [(1, False), (128, False), (129, True), (254, True), (1000, True)])
def test_too_deep_counts_containers(levels: int, deep: bool) -> None:
    raw = nested_raw(levels)
    assert too_deep(orjson.loads(raw), raw, 128) is deep


def test_every_body_within_the_limit_can_be_written() -> None:
    raw = nested_raw(254)  # the highest max_json_depth allowed
    assert not too_deep(orjson.loads(raw), raw, 254)
    assert canonical(orjson.loads(raw)) == raw


def test_brackets_inside_strings_do_not_make_a_body_deep() -> None:
    raw = orjson.dumps({"model": "m", "messages": [{"role": "user", "content": "[{" * 500}]})
    assert not too_deep(orjson.loads(raw), raw, 4)


def test_parse_refuses_a_deep_body_before_it_is_rewritten() -> None:
    raw = b'{"model": "gpt-4o-mini", "stream": true, "messages": [], "x": ' + nested_raw(300) + b"}"
    with pytest.raises(InvalidRequest) as e:
        openai.parse("/v1/chat/completions", raw, 128)
    assert e.value.status == 400 and e.value.code == "json_too_deep"


@pytest.mark.parametrize("depth", [0, 255, 1024])
def test_max_json_depth_must_stay_below_the_writer_limit(tmp_path: Path, depth: int) -> None:
    path = gateway_config(tmp_path, "http://127.0.0.1:9", server__max_json_depth=depth)
    with pytest.raises(ConfigError) as e:
        load_settings(path, {"TEST_OPENAI_KEY": "x", "TEST_ANTHROPIC_KEY": "y"})
    assert "server.max_json_depth" in str(e.value)


@pytest.mark.parametrize("name", ["authorization", "x-api-key", "x-agent-id", "mcp-session-id"])
def test_a_single_value_header_sent_twice_is_refused(name: str) -> None:
    scope = {"headers": [(b"accept", b"*/*"), (name.encode(), b"a"), (name.encode(), b"b")]}
    with pytest.raises(InvalidRequest) as e:
        headers_dict(scope)
    assert e.value.status == 400 and e.value.code == "duplicate_header" and "a" not in e.value.message.split()


def test_other_headers_may_repeat() -> None:
    scope = {"headers": [(b"accept", b"a"), (b"accept", b"b"), (b"authorization", b"Bearer k")]}
    assert headers_dict(scope) == {"accept": "b", "authorization": "Bearer k"}
