"""A real provider endpoint, reached over one shared aiohttp session per upstream.

aiohttp rather than httpx: its pool holds up under concurrency (DESIGN.md,
"Measured facts"). aiohttp's exceptions are mapped to gateway.errors here, in
send, read and mid-stream alike, so the pipeline never sees them.
"""
from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Mapping

import aiohttp

from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.settings import UpstreamSettings

# Client headers worth passing on; credentials, cookies and hop-by-hop never are. The W3C
# trace context is the gateway's own span when tracing is on, else the client's unchanged.
FORWARDED_HEADERS = frozenset({"content-type", "accept", "anthropic-version", "anthropic-beta",
                               "openai-beta", "x-request-id", "traceparent", "tracestate"})
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                         "proxy-connection", "te", "trailer", "trailers", "transfer-encoding",
                         "upgrade"})
# The body is re-framed (and decoded) by the gateway, so these no longer describe it.
_DROPPED_RESPONSE = _HOP_BY_HOP | {"content-length", "content-encoding"}


_MAPPED = (asyncio.TimeoutError, aiohttp.ClientError, OSError)


def mapped_error(e: BaseException, name: str, phase: str) -> Exception:
    """The gateway error for an aiohttp failure, without secrets (raise it `from None`)."""
    if isinstance(e, (asyncio.TimeoutError, aiohttp.ServerTimeoutError)):
        # ServerTimeoutError covers SocketTimeoutError (sock_read) and ConnectionTimeoutError.
        what = "connect" if isinstance(e, aiohttp.ConnectionTimeoutError) else "read"
        return UpstreamTimeout(f"upstream {name} timed out ({what})")
    if isinstance(e, aiohttp.ClientConnectorError):
        reason = ("connection refused" if isinstance(e.os_error, ConnectionRefusedError)
                  else "cannot connect")
        return UpstreamError(f"upstream {name} unreachable: {reason}")
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return UpstreamError(f"upstream {name} {phase}: server disconnected")
    if isinstance(e, aiohttp.ClientPayloadError):
        return UpstreamError(f"upstream {name} {phase}: response body cut short")
    return UpstreamError(f"upstream {name} {phase}: {type(e).__name__}")


@asynccontextmanager
async def mapped_errors(name: str, phase: str) -> AsyncIterator[None]:
    """Translate aiohttp failures into UpstreamError / UpstreamTimeout (for cold paths)."""
    try:
        yield
    except _MAPPED as e:
        raise mapped_error(e, name, phase) from None


def static_headers(settings: UpstreamSettings) -> dict[str, str]:
    """What every request to this upstream carries: defaults and the provider's credentials."""
    out = {"content-type": "application/json"}
    if settings.provider == "anthropic":
        out["anthropic-version"] = settings.anthropic_version
    return out


def credential_headers(settings: UpstreamSettings) -> dict[str, str]:
    key = settings.api_key
    if not key:
        return {}
    return {"x-api-key": key} if settings.provider == "anthropic" else {"authorization": f"Bearer {key}"}


def outbound_headers(client: Mapping[str, str], base: Mapping[str, str], creds: Mapping[str, str]) -> dict[str, str]:
    """The upstream's static headers, the allowlisted client headers, then its own credentials.

    `client` has lowercase names (ASGI), so the allowlist is looked up, not scanned.
    """
    out = dict(base)
    for k in FORWARDED_HEADERS:
        v = client.get(k)
        if v is not None:
            out[k] = v
    out["accept-encoding"] = "identity"  # SSE chunks must arrive as they are sent
    out.update(creds)
    return out


def response_headers(raw: Mapping[str, str]) -> dict[str, str]:
    named = {t.strip().lower() for t in raw.get("connection", "").split(",")}
    return {k.lower(): v for k, v in raw.items()
            if k.lower() not in _DROPPED_RESPONSE and k.lower() not in named}


def new_session(max_connections: int, connect_s: float, read_s: float) -> aiohttp.ClientSession:
    """One pooled session per endpoint; read_s bounds the wait between bytes, not the whole answer."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=max_connections, ttl_dns_cache=300),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_s, sock_read=read_s),
        # Decodes only if an endpoint ignores our identity request; the
        # content-encoding header is dropped on the way back either way.
        auto_decompress=True,
        cookie_jar=aiohttp.DummyCookieJar(),  # no state shared between agents
    )


class PooledEndpoint:
    """start/aclose of one shared session, sized and timed by `self.settings`."""
    settings: Any
    _session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        if self._session is not None:
            return
        s = self.settings
        self._session = new_session(s.max_connections, s.connect_timeout_s, s.read_timeout_s)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class HTTPResponse:
    """An aiohttp response behind the UpstreamResponse shape."""

    def __init__(self, name: str, resp: aiohttp.ClientResponse) -> None:
        self._name = name
        self._resp = resp
        self.status = resp.status
        self.headers = response_headers(resp.headers)

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except _MAPPED as e:
            raise mapped_error(e, self._name, "failed while sending the body") from None
        finally:
            self._resp.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async with mapped_errors(self._name, "failed mid-stream"):
                async for chunk in self._resp.content.iter_any():
                    yield chunk
        finally:
            self._resp.release()

    async def aclose(self) -> None:
        # Closes the connection if the body was not read to the end, else pools it.
        self._resp.release()


class HTTPUpstream(PooledEndpoint):
    """Implements gateway.protocols.Upstream for OpenAI- and Anthropic-style providers."""

    def __init__(self, name: str, settings: UpstreamSettings) -> None:
        if not settings.base_url:
            raise ValueError(f"upstream {name} needs base_url")
        self.name = name
        self.settings = settings
        self._base = settings.base_url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None
        self._base_headers = static_headers(settings)
        self._creds = credential_headers(settings)

    async def send(self, method: str, path: str, body: bytes, api: str,
                   headers: Mapping[str, str]) -> HTTPResponse:
        if self._session is None:
            raise RuntimeError(f"upstream {self.name} used before start()")
        try:
            resp = await self._session.request(
                method, self._base + path, data=body or None,
                headers=outbound_headers(headers, self._base_headers, self._creds),
                allow_redirects=False)
        except _MAPPED as e:
            raise mapped_error(e, self.name, "failed") from None
        return HTTPResponse(self.name, resp)
