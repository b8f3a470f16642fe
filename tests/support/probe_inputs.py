"""Hypothesis strategies for bad input on every surface, and the fixed corpus of issue 9.

Each strategy draws a `Probe`: a raw request (method, path, headers that may repeat,
body bytes). Bodies are written by hand, not by json.dumps of a dict, so a key can
repeat and nesting can go deeper than any serializer allows. `strict` marks probes the
gateway itself must refuse with a 4xx; the rest may be forwarded (a wrong type in a
field the gateway does not read is the provider's business) but must never be a 5xx.
"""
from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from tests.support.harness import KEYS
from tests.support.probe import FAKE_KEY_PREFIX, Probe

JSON_CT = ("content-type", "application/json")
MCP_ACCEPT = ("accept", "application/json, text/event-stream")
ANTHROPIC_VERSION = ("anthropic-version", "2023-06-01")
# The probe spends the limits of these agents; `executor` is kept for the health check.
AGENTS = ("observer", "intern-bot", "builder", "architect")
MODELS = ("gpt-4o-mini", "gpt-4.1-mini", "claude-haiku-4-5", "mock-echo", "text-embedding-3-small", "llama-x")
OPENAI_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")
ANTHROPIC_PATHS = ("/v1/messages", "/v1/messages/count_tokens")
LLM_PATHS = OPENAI_PATHS + ANTHROPIC_PATHS
TOOLS = ("weather", "weather_get", "wipe_cache", "broken", "nope", "we%00ather", "x" * 300)
MCP_METHODS = ("initialize", "tools/list", "tools/call", "resources/read", "resources/list", "prompts/get",
               "prompts/list", "ping", "notifications/initialized", "notifications/cancelled", "completion/complete",
               "logging/setLevel", "sampling/createMessage", "")
MCP_TOOLS = ("read_orders", "refund_order", "delete_customer", "nope")

# Fields each surface's parser reads: a wrong type in one of these is the gateway's to refuse.
GOVERNED = {
    "/v1/chat/completions": ("model", "messages", "tools", "functions", "max_tokens", "max_completion_tokens"),
    "/v1/completions": ("model", "max_tokens"),
    "/v1/embeddings": ("model",),
    "/v1/responses": ("model", "tools", "max_output_tokens"),
    "/v1/messages": ("model", "messages", "tools", "max_tokens"),
    "/v1/messages/count_tokens": ("model", "messages"),
}
# The gateway under probe is configured with this server.max_json_depth (containers, the
# body's own object included).
MAX_DEPTH = 128
OTHER_FIELDS = ("tools", "functions", "stream", "stream_options", "temperature", "tool_choice", "input", "prompt",
                "system", "metadata", "n", "user", "top_p", "stop", "response_format", "seed", "thinking",
                "instructions")


def dumps(v: Any) -> str:
    return json.dumps(v, ensure_ascii=False)


def obj(pairs: list[tuple[str, str]]) -> bytes:
    """A JSON object from (key, already-encoded value) pairs; keys may repeat."""
    return ("{" + ",".join(f"{dumps(k)}:{v}" for k, v in pairs) + "}").encode("utf-8", "surrogatepass")


def base_body(path: str, model: str = "gpt-4o-mini") -> list[tuple[str, str]]:
    msgs = dumps([{"role": "user", "content": "hi"}])
    if path in ANTHROPIC_PATHS:
        model = model if model.startswith("claude") else "claude-haiku-4-5"
        return [("model", dumps(model)), ("messages", msgs), ("max_tokens", "16")]
    return {"/v1/chat/completions": [("model", dumps(model)), ("messages", msgs)],
            "/v1/completions": [("model", dumps(model)), ("prompt", '"hi"')],
            "/v1/embeddings": [("model", dumps("text-embedding-3-small")), ("input", '"hi"')],
            "/v1/responses": [("model", dumps(model)), ("input", '"hi"')]}[path]


def auth(agent: str) -> tuple[str, str]:
    return ("authorization", f"Bearer {KEYS[agent]}")


# -- values -----------------------------------------------------------------------------

odd_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8", categories=["Cc", "Cf", "Zs", "Co"]), min_size=1, max_size=20),
    st.sampled_from(["", " ", "\x00", "\u2028", "\ufeff", "gpt-4o-mini\x00", "gpt-4o-mini\n", "../../etc/passwd",
                     "%00", "*", "gpt-*", "\\u0000", "\U0001F600" * 50, "A" * 5000]),
)
json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
              st.floats(allow_nan=False), odd_text),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(odd_text, inner, max_size=4)),
    max_leaves=12,
)
# Encoded JSON the stdlib cannot write: NaN, big exponents, lone surrogates, -0, bare words.
weird_literal = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-0", "0.0e0", "1E-400",
                                 '"\\ud800"', '"\\udfff x"', "18446744073709551616", "true", "null", "[]", "{}",
                                 "[[]]", '{"":""}', "-", "01", ".5", "1.", "+1", "'x'", "undefined"])
encoded = st.one_of(json_value.map(dumps), weird_literal)


def nested(depth: int, leaf: str = "1", closed: bool = True) -> str:
    opened = "".join('{"a":' if i % 2 else "[" for i in range(depth))
    closing = "".join("}" if i % 2 else "]" for i in reversed(range(depth)))
    return opened + leaf + (closing if closed else "")


# -- LLM bodies ------------------------------------------------------------------------

@st.composite
def llm_field_mutation(draw: Any) -> Probe:
    """A valid body with one field given a wrong type, removed, repeated or added."""
    path = draw(st.sampled_from(LLM_PATHS))
    pairs = base_body(path, draw(st.sampled_from(MODELS)))
    governed = GOVERNED[path]
    field = draw(st.sampled_from(governed + OTHER_FIELDS))
    how = draw(st.sampled_from(["replace", "replace", "drop", "duplicate", "add-other"]))
    value = draw(encoded)
    keys = [k for k, _ in pairs]
    if how == "drop":
        pairs = [(k, v) for k, v in pairs if k != field]
    elif how == "duplicate":
        pairs = pairs + [(field, value)]
    elif field in keys and how == "replace":
        pairs = [(k, value if k == field else v) for k, v in pairs]
    else:
        pairs = pairs + [(field, value)]
    return Probe("POST", path, (auth(draw(st.sampled_from(AGENTS))), JSON_CT), obj(pairs), label=f"field:{how}:{field}")


@st.composite
def llm_wrong_type_governed(draw: Any) -> Probe:
    """A governed field of a type its parser cannot use: always the gateway's 400."""
    path = draw(st.sampled_from(LLM_PATHS))
    field = draw(st.sampled_from(GOVERNED[path]))
    wrong = {"model": st.one_of(st.integers(), st.booleans(), st.none(), st.just('""'), st.lists(st.integers())),
             "messages": st.one_of(st.integers(), st.text(max_size=5), st.booleans(),
                                   st.dictionaries(st.text(), st.integers(), max_size=2)),
             "tools": st.one_of(st.integers(), st.booleans(), st.text(max_size=5), st.floats(allow_nan=False),
                                st.lists(st.one_of(st.integers(), st.text(max_size=3), st.none()),
                                         min_size=1, max_size=3)),
             "functions": st.one_of(st.integers(), st.booleans(), st.text(max_size=5),
                                    st.lists(st.one_of(st.integers(), st.none()), min_size=1, max_size=3)),
             }.get(field, st.one_of(st.text(max_size=5), st.floats(allow_nan=False), st.booleans(),
                                    st.integers(max_value=0), st.lists(st.integers(), max_size=2)))
    value = draw(wrong)
    enc = value if value == '""' else dumps(value)
    pairs = [(k, v) for k, v in base_body(path) if k != field] + [(field, enc)]
    return Probe("POST", path, (auth("architect"), JSON_CT), obj(pairs), strict=True, label=f"wrong-type:{field}")


@st.composite
def malformed_json(draw: Any) -> Probe:
    """Bytes that are not one JSON object: truncated, trailing garbage, other types, bad UTF-8."""
    path = draw(st.sampled_from(LLM_PATHS))
    good = obj(base_body(path))
    cut = draw(st.integers(min_value=0, max_value=len(good) - 1))
    body = draw(st.one_of(
        st.just(good[:cut]),
        st.just(good + draw(st.sampled_from([b"x", b"}", b",", b"{}", b"\x00", b"]"]))),
        st.binary(max_size=64),
        encoded.map(lambda s: s.encode("utf-8", "surrogatepass")).filter(lambda b: not b.startswith(b"{")),
        st.just(good.replace(b'"hi"', b'"h\xff\xfei"')),
        st.just(b"\xef\xbb\xbf" + good),  # a UTF-8 BOM
        st.just(good.replace(b'"hi"', b'"h\x01i\n"')),  # raw control characters inside a string
    ))
    return Probe("POST", path, (auth("intern-bot"), JSON_CT), body, strict=True, label="malformed")


@st.composite
def deep_nesting(draw: Any) -> Probe:
    """Nesting in a governed field (strict) or a forwarded one; past the limit, a 400 either way."""
    path = draw(st.sampled_from(LLM_PATHS))
    depth = draw(st.one_of(st.integers(1, 64), st.integers(MAX_DEPTH - 4, MAX_DEPTH + 4), st.integers(250, 320),
                           st.integers(1000, 1100), st.integers(5000, 20000)))
    field = draw(st.sampled_from(["metadata", "messages", "tools", "model", "stream_options"]))
    closed = draw(st.booleans())
    pairs = [(k, v) for k, v in base_body(path) if k != field] + [(field, nested(depth, closed=closed))]
    # A stream body is rewritten (stream_options), the path where deep bodies used to 500.
    pairs.append(("stream", "true"))
    # A nested model is never a string; lists of lists are not messages or tools the gateway
    # can read, but their items' shapes are the provider's business.
    strict = not closed or depth + 1 > MAX_DEPTH or field == "model"
    return Probe("POST", path, (auth("builder"), JSON_CT), obj(pairs), strict=strict, label=f"deep:{depth}:{field}")


@st.composite
def huge_strings(draw: Any) -> Probe:
    path = draw(st.sampled_from(LLM_PATHS))
    size = draw(st.one_of(st.integers(1000, 20000), st.integers(65000, 70000), st.integers(100_000, 300_000)))
    where = draw(st.sampled_from(["model", "content", "key"]))
    blob = draw(st.sampled_from(["x", "\u00e9", "\U0001F600", "\\u0000", "\x7f"])) * (size // 4)
    pairs = base_body(path)
    if where == "model":
        pairs = [(k, dumps(blob) if k == "model" else v) for k, v in pairs]
    elif where == "content":
        pairs = pairs + [("metadata", dumps({"note": blob}))]
    else:
        pairs = pairs + [(blob[:5000], "1")]
    body = obj(pairs)
    strict = where == "model" or len(body) > 65536
    return Probe("POST", path, (auth("builder"), JSON_CT), body, strict=strict, label=f"huge:{where}:{len(body)}")


@st.composite
def control_names(draw: Any) -> Probe:
    """Control characters in the names the policy reads: the model, a declared tool."""
    path = draw(st.sampled_from(LLM_PATHS))
    cc = draw(st.sampled_from([chr(c) for c in [*range(0, 32), *range(127, 160)]]))
    name = draw(st.sampled_from(["gpt-4o-mini", "claude-haiku-4-5", "read_orders"]))
    spot = draw(st.integers(0, len(name)))
    bad = name[:spot] + cc + name[spot:]
    pairs = [(k, dumps(bad) if k == "model" else v) for k, v in base_body(path)]
    return Probe("POST", path, (auth("architect"), JSON_CT), obj(pairs), strict=True, label="control-model")


# -- headers: credentials and content types ----------------------------------------------

fake_key = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=6, max_size=40).map(
    lambda s: FAKE_KEY_PREFIX + s)
# Header values as a client can send them (no leading or trailing blanks: h11 refuses those).
header_text = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7e), max_size=60).map(str.strip)


@st.composite
def bad_credentials(draw: Any) -> Probe:
    """Missing, unknown, malformed and duplicated credentials: 400 or 401, never forwarded."""
    path = draw(st.sampled_from(LLM_PATHS + ("/v1/models", "/tools/weather", "/mcp/orders")))
    a, b = draw(st.sampled_from(AGENTS)), draw(st.sampled_from(AGENTS))
    kind = draw(st.sampled_from(["none", "unknown", "scheme", "empty", "dup-auth", "dup-x-api-key",
                                 "dup-agent-id", "jwt-garbage", "huge"]))
    h: list[tuple[str, str]] = []
    if kind == "unknown":
        h = [("authorization", f"Bearer {draw(fake_key)}")]
    elif kind == "scheme":
        h = [("authorization", draw(st.sampled_from(["Basic ", "Token ", "bearer", "Bearer  ", ""])) + draw(fake_key))]
    elif kind == "empty":
        h = [(draw(st.sampled_from(["authorization", "x-api-key"])), draw(st.sampled_from(["", "Bearer", "Basic"])))]
    elif kind == "dup-auth":
        h = [auth(a), ("authorization", f"Bearer {draw(st.one_of(st.just(KEYS[b]), fake_key))}")]
    elif kind == "dup-x-api-key":
        h = [("x-api-key", KEYS[a]), ("x-api-key", draw(st.one_of(st.just(KEYS[b]), fake_key)))]
    elif kind == "dup-agent-id":
        h = [("authorization", "Bearer pk-quickstart-workspace"), ("x-agent-id", a), ("x-agent-id", b)]
    elif kind == "jwt-garbage":
        h = [("authorization", "Bearer " + draw(st.sampled_from(["a.b.c", "eyJ.eyJ.", "...", "e30.e30.e30"])) +
              draw(fake_key))]
    elif kind == "huge":
        h = [("authorization", "Bearer " + FAKE_KEY_PREFIX + "k" * draw(st.integers(1000, 8000)))]
    headers = tuple(h) + (JSON_CT,)
    if path.startswith("/mcp/"):
        headers += (MCP_ACCEPT,)
        body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    elif path in LLM_PATHS:
        body = obj(base_body(path))
    else:
        body = b'{"city":"Oslo"}'
    method = "GET" if path == "/v1/models" else "POST"
    # An unknown single API key is still a refusal; the no-credential case may fall to the
    # workspace default agent (observer), whom the default policy refuses on every surface
    # but the models listing.
    strict = not (kind == "none" and path == "/v1/models")
    return Probe(method, path, headers, body if method == "POST" else b"", strict=strict, label=f"cred:{kind}")


@st.composite
def wrong_content_type(draw: Any) -> Probe:
    path = draw(st.sampled_from(LLM_PATHS + ("/tools/weather", "/mcp/orders")))
    ct = draw(st.one_of(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                         "application/json; charset=utf-16", "application/xml", "*/*",
                                         "application/json; charset=\x7f", "", "application/json, text/html"]),
                        header_text))
    body = draw(st.sampled_from([b"a=1&b=2", b"<x/>", b"--b\r\nContent-Disposition: form-data\r\n\r\n",
                                 "{}".encode("utf-16"), b'{"jsonrpc":"2.0","id":1,"method":"ping"}']))
    headers: tuple[tuple[str, str], ...] = (auth("architect"), ("content-type", ct))
    if path.startswith("/mcp/"):
        headers += (MCP_ACCEPT,)
    strict = path in LLM_PATHS  # none of these bodies is a usable LLM request
    return Probe("POST", path, headers, body, strict=strict, label="content-type")


# -- methods and paths ----------------------------------------------------------------

@st.composite
def odd_routes(draw: Any) -> Probe:
    method = draw(st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE",
                                   "PROPFIND", "FOO", "get"]))
    path = draw(st.one_of(
        st.sampled_from([*LLM_PATHS, "/v1/models", "/v1/models/gpt-4o-mini", "/tools/weather", "/mcp/orders",
                         "/v1/chat/completions/", "//v1/chat/completions", "/v1/./chat/completions",
                         "/v1/chat/completions%2F", "/V1/CHAT/COMPLETIONS", "/v1/models/%00", "/v1/models/a/b",
                         "/mcp/", "/mcp/nope", "/mcp/orders/extra", "/tools/", "/tools/a/b", "/v2/x",
                         "/v1/messages/batches", "/%2e%2e/%2e%2e/etc/passwd", "/v1/models/" + "m" * 3000,
                         "/v1/models/%E2%80%AE", "/v1/chat/completions?x=" + "y" * 500, "/.well-known/nope"]),
        header_text.map(lambda s: "/" + "".join(c for c in s if c not in "#?% ")),
    ))
    body = b'{"model":"gpt-4o-mini","messages":[]}' if method in ("POST", "PUT", "PATCH") else b""
    headers: tuple[tuple[str, str], ...] = (auth(draw(st.sampled_from(AGENTS))),)
    if draw(st.booleans()):
        headers += (ANTHROPIC_VERSION,)
    if path.startswith("/mcp/"):
        headers += (MCP_ACCEPT,)
    return Probe(method, path, headers, body, label="route")


# -- MCP --------------------------------------------------------------------------------

@st.composite
def mcp_messages(draw: Any) -> Probe:
    """Odd JSON-RPC: wrong versions, ids, methods, params, tool names, notifications."""
    pairs: list[tuple[str, str]] = []
    if draw(st.integers(0, 9)):
        pairs.append(("jsonrpc", draw(st.one_of(st.just('"2.0"'), st.just('"2.0"'), encoded))))
    shape = draw(st.sampled_from(["request", "request", "notification", "response", "no-method"]))
    if shape in ("request", "response"):
        pairs.append(("id", draw(st.one_of(st.integers(-5, 2**70).map(str), st.just('"x"'), encoded))))
    method = draw(st.one_of(st.sampled_from(MCP_METHODS), odd_text))
    if shape in ("request", "notification"):
        pairs.append(("method", draw(st.one_of(st.just(dumps(method)), st.just(dumps(method)), encoded))))
    if shape == "response":
        pairs.append(("result", draw(encoded)))
    params = draw(st.one_of(
        st.builds(lambda n, a: dumps({"name": n, "arguments": a}),
                  st.one_of(st.sampled_from(MCP_TOOLS), odd_text, json_value), json_value),
        st.builds(lambda u: dumps({"uri": u}), st.one_of(odd_text, json_value)),
        encoded,
    ))
    if draw(st.booleans()):
        pairs.append(("params", params))
    if draw(st.integers(0, 4)) == 0:  # a repeated key: the method or the tool name said twice
        pairs.append(draw(st.sampled_from([("method", '"tools/call"'), ("id", "2"), ("params", params)])))
    body = obj(pairs) if draw(st.integers(0, 7)) else draw(st.sampled_from(
        [b"[" + obj(pairs) + b"]", b"[]", b"", b"null", obj(pairs)[:-1], b'{"jsonrpc":"2.0"'] ))
    headers: tuple[tuple[str, str], ...] = (auth(draw(st.sampled_from(AGENTS))), JSON_CT, MCP_ACCEPT)
    extra = draw(st.sampled_from([(), (("mcp-protocol-version", "2025-11-25"),),
                                  (("mcp-protocol-version", "2026-07-28"),), (("mcp-protocol-version", "1999-01-01"),),
                                  (("mcp-session-id", draw(header_text)),), (("mcp-method", draw(header_text)),)]))
    server = draw(st.sampled_from(["orders", "orders", "orders", "nope"]))
    return Probe("POST", f"/mcp/{server}", headers + extra, body, label=f"mcp:{shape}")


@st.composite
def mcp_get_delete(draw: Any) -> Probe:
    method = draw(st.sampled_from(["GET", "DELETE"]))
    headers: tuple[tuple[str, str], ...] = (auth(draw(st.sampled_from(AGENTS))),
                                            ("accept", draw(st.sampled_from(["text/event-stream", "*/*",
                                                                             "application/json", ""]))))
    session = draw(st.one_of(st.none(), header_text, st.sampled_from(["", "0" * 200, "../x"])))
    if session is not None:
        headers += (("mcp-session-id", session),)
    headers += draw(st.sampled_from([(), (("mcp-protocol-version", "2025-11-25"),),
                                     (("mcp-protocol-version", "2026-07-28"),), (("last-event-id", "x"),)]))
    return Probe(method, f"/mcp/{draw(st.sampled_from(['orders', 'nope']))}", headers, label="mcp:get-delete")


# -- HTTP tools and models -------------------------------------------------------------

@st.composite
def http_tool_calls(draw: Any) -> Probe:
    name = draw(st.sampled_from(TOOLS))
    body = draw(st.one_of(json_value.map(lambda v: dumps(v).encode()),
                          st.just(b"{"), st.just(b""), st.just(b'{"city":"Oslo","city":"Bergen"}'),
                          st.just(obj([("city", nested(draw(st.integers(1, 2000))))]))))
    return Probe("POST", f"/tools/{name}", (auth(draw(st.sampled_from(AGENTS))), JSON_CT), body, label="tool")


@st.composite
def models_requests(draw: Any) -> Probe:
    model = draw(st.one_of(st.sampled_from(["gpt-4o-mini", "claude-haiku-4-5", "nope", "%00", "a%0Ab",
                                            "x" * 400, "gpt-4o-mini%20", "..", "%2e%2e"]),
                           header_text.map(lambda s: "".join(c for c in s if c not in "#?%/ "))))
    path = "/v1/models" + (f"/{model}" if draw(st.booleans()) and model else "")
    headers: tuple[tuple[str, str], ...] = (auth(draw(st.sampled_from(AGENTS))),)
    if draw(st.booleans()):
        headers += (ANTHROPIC_VERSION,)
    if draw(st.booleans()):
        headers += (("anthropic-version", draw(header_text)),)
    query = draw(st.sampled_from(["", "?limit=-1", "?after_id=%00", "?limit=abc&limit=2"]))
    return Probe("GET", path + query, headers, label="models")
