"""The baseline: a minimal Starlette pass-through with one shared aiohttp.ClientSession.

No identity, policy, limits or audit: only what any Python proxy on this stack
must do (read the body, forward it, relay the answer, stream SSE through). The
Portcullis/bare ratio is measured against this, run the same way (uvicorn,
uvloop, httptools, one process).

    python -m bench.bare_proxy --port 9001 --upstream http://127.0.0.1:9000
"""
from __future__ import annotations

import argparse
import contextlib
from typing import Any, AsyncIterator

_HEADERS = {"content-type": "application/json", "accept-encoding": "identity"}


def create_app(upstream: str) -> Any:
    import aiohttp
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
    from starlette.routing import Route

    state: dict[str, aiohttp.ClientSession] = {}

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state["session"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256), cookie_jar=aiohttp.DummyCookieJar())
        yield
        await state["session"].close()

    async def forward(request: Request) -> Response:
        body = await request.body()
        resp = await state["session"].post(upstream + request.url.path, data=body, headers=_HEADERS)
        ctype = resp.headers.get("content-type", "application/json")
        if ctype.startswith("text/event-stream"):
            async def relay() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                finally:
                    resp.release()
            return StreamingResponse(relay(), status_code=resp.status, media_type="text/event-stream")
        data = await resp.read()
        resp.release()
        return Response(data, status_code=resp.status, media_type=ctype)

    return Starlette(routes=[Route("/v1/{path:path}", forward, methods=["POST"])], lifespan=lifespan)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    args = p.parse_args()
    import uvicorn

    uvicorn.run(create_app(args.upstream.rstrip("/")), host=args.host, port=args.port, loop="uvloop",
                http="httptools", lifespan="on", access_log=False, log_level="warning")


if __name__ == "__main__":
    main()
