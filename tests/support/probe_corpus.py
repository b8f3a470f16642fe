"""The fixed corpus: each bad input issue 9 names, as a probe with the answer it must get."""
from __future__ import annotations

import json
import time
from typing import Any

import jwt as pyjwt

from tests.support.harness import KEYS
from tests.support.probe import Probe
from tests.support.probe_inputs import JSON_CT, MAX_DEPTH, MCP_ACCEPT, auth, base_body, dumps, nested, obj

JWT_SECRET = "probe-hs256-secret-that-is-long-enough-0123456789"
JWT_ISSUER, JWT_AUDIENCE = "https://idp.probe/", "portcullis"
JWT_SETTINGS = {"issuer": JWT_ISSUER, "audience": JWT_AUDIENCE, "algorithms": ["HS256"],
                "hs_secret_env": "PROBE_JWT_SECRET"}


def token(**claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "jwt-agent", "tier": 1, "maturity": "intern", "workspace": "quickstart",
               "iss": JWT_ISSUER, "aud": JWT_AUDIENCE, "iat": now, "exp": now + 600, **claims}
    # Signed as raw JWS: pyjwt's encode() refuses to write most of the wrong claim types.
    return pyjwt.PyJWS().encode(json.dumps(payload).encode(), JWT_SECRET, algorithm="HS256")


def _chat(*extra: tuple[str, str], path: str = "/v1/chat/completions") -> bytes:
    return obj(base_body(path) + list(extra))


def corpus() -> list[Probe]:
    """Built when called: the JWTs carry the current time."""
    probes: list[Probe] = []
    # Duplicate credential headers: 400, whichever agents they name.
    for name, a, b in (("authorization", f"Bearer {KEYS['intern-bot']}", f"Bearer {KEYS['architect']}"),
                       ("authorization", f"Bearer {KEYS['architect']}", f"Bearer {KEYS['architect']}"),
                       ("x-api-key", KEYS["intern-bot"], KEYS["architect"])):
        for path in ("/v1/chat/completions", "/v1/messages", "/v1/models", "/mcp/orders", "/tools/weather"):
            body = (b"" if path == "/v1/models" else b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
                    if path.startswith("/mcp/") else _chat(path=path) if path.startswith("/v1/") else b"{}")
            probes.append(Probe("GET" if path == "/v1/models" else "POST", path,
                                ((name, a), (name, b), JSON_CT, MCP_ACCEPT), body, strict=True, expect=400,
                                label=f"dup-credential:{name}"))
    probes.append(Probe("POST", "/v1/chat/completions",
                        (("authorization", "Bearer pk-quickstart-workspace"), ("x-agent-id", "intern-bot"),
                         ("x-agent-id", "architect"), JSON_CT), _chat(), strict=True, expect=400,
                        label="dup-credential:x-agent-id"))
    # JWT claims of the wrong type, correctly signed: 401.
    now = int(time.time())
    for claims in ({"exp": str(now + 600)}, {"iat": str(now)}, {"nbf": str(now - 5)}, {"exp": [now + 600]},
                   {"exp": True}, {"iss": 7}, {"aud": 7}, {"aud": {"x": JWT_AUDIENCE}}):
        probes.append(Probe("POST", "/v1/chat/completions", (("authorization", "Bearer " + token(**claims)), JSON_CT),
                            _chat(), strict=True, expect=401, label=f"jwt-claim:{sorted(claims)[0]}"))
    # Tools of the wrong type: 400 in the surface's format on every surface that reads them.
    for path in ("/v1/chat/completions", "/v1/responses", "/v1/messages"):
        for field, value in (("tools", "5"), ("tools", "true"), ("functions", "7"), ("tools", '"x"'),
                             ("tools", "[5]"), ("tools", '[{"function": 5}]'), ("tools", '[{"name": 5}]')):
            if field == "functions" and path != "/v1/chat/completions":
                continue
            probes.append(Probe("POST", path, (auth("architect"), JSON_CT), _chat((field, value), path=path),
                                strict=field != "tools" or value in ("5", "true", '"x"'),
                                label=f"wrong-type:{field}={value}"))
    # Deep JSON in a body the gateway rewrites (a stream without stream_options): refused past
    # the configured depth (the body's own object counts), answered below it.
    for depth in (MAX_DEPTH - 2, MAX_DEPTH - 1, MAX_DEPTH, 255, 256, 300, 1024, 1025, 10_000):
        for path in ("/v1/chat/completions", "/v1/messages"):
            body = _chat(("stream", "true"), ("metadata", nested(depth)), path=path)
            too_deep = depth + 1 > MAX_DEPTH
            probes.append(Probe("POST", path, (auth("architect"), JSON_CT), body, strict=too_deep,
                                expect=400 if too_deep else 200, label=f"deep:{depth}"))
    # Header limits: 431 for a 1 MB header, and for 2,000 headers.
    probes.append(Probe("POST", "/v1/chat/completions", (auth("builder"), JSON_CT, ("x-big", "b" * 1_000_000)),
                        _chat(), strict=True, expect=431, label="header:1MB"))
    probes.append(Probe("POST", "/v1/chat/completions",
                        (auth("builder"), JSON_CT, *((f"x-h{i}", "v") for i in range(2000))),
                        _chat(), strict=True, expect=431, label="header:2000"))
    # MCP: a non-JSON-RPC answer from the server (it refuses this content type) is wrapped.
    probes.append(Probe("POST", "/mcp/orders", (auth("architect"), ("content-type", "text/plain"), MCP_ACCEPT),
                        b'{"jsonrpc":"2.0","id":1,"method":"ping"}', label="mcp:upstream-plain-text"))
    probes.append(Probe("GET", "/mcp/orders", (auth("architect"), ("accept", "application/json")),
                        label="mcp:get-not-acceptable"))
    probes.append(Probe("PUT", "/mcp/orders", (auth("architect"), JSON_CT), b"{}", strict=True, expect=405,
                        label="mcp:put"))
    return probes


def duplicate_key_probes() -> list[tuple[Probe, str]]:
    """Bodies naming the model twice, each with a marker to find what the upstream received."""
    out = []
    for i, (path, first, second) in enumerate((("/v1/chat/completions", "gpt-4o", "gpt-4.1-mini"),
                                               ("/v1/chat/completions", "gpt-4.1-mini", "gpt-4o"),
                                               ("/v1/messages", "claude-sonnet-4-6", "claude-haiku-4-5"),
                                               ("/v1/responses", "gpt-4o", "gpt-4o-mini"))):
        marker = f"probe-dup-key-{i}"
        body = obj([("model", dumps(first))] + base_body(path, second)[1:] + [("model", dumps(second)),
                                                                              ("metadata", dumps({"m": marker}))])
        out.append((Probe("POST", path, (auth("intern-bot"), JSON_CT), body, label=f"dup-key:{first}/{second}"),
                    marker))
    return out
