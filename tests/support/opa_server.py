"""A small server that speaks OPA's REST API as documented, backed by the embedded regorus engine.

No OPA binary can run here, so the `opa` policy backend is tested against this: a real
socket on 127.0.0.1, the request and response shapes of OPA's documentation
(https://www.openpolicyagent.org/docs/rest-api):

- `POST /v1/data/{path}` with `{"input": ...}` and `GET /v1/data/{path}`: `{"result": ...}`,
  and `{}` (no `result`) when the document is undefined; `?provenance=true` adds
  `provenance` with `bundles.<name>.revision` when a bundle revision is set;
- `POST /v1/query` with `{"query", "input"}`: `{"result": [bindings, ...]}`, `{}` when undefined;
- `GET /health` (200 `{}`; 500 `{"error"}`), `?bundles` checks bundle activation;
- errors as `{"code", "message"}` with a 4xx/5xx status.

Knobs for tests: `fail` (answer every data/query call with this status and OPA error
body), `delay_s` (answer late), `healthy`, `bundles_activated`, `bundle_revision`, and
`reload()` after editing the policy directory. The engine is built on the loop thread
that serves (regorus engines are bound to their thread).
"""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from adapters.policy.bundle import build_engine, collect, error_text
from tests.support.harness import Served, free_socket
from tests.support.waiting import eventually_async


def _json(doc: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(doc), status, media_type="application/json")


def _error(status: int, code: str, message: str) -> Response:
    return _json({"code": code, "message": message}, status)


def _flag(request: Request, name: str) -> bool:
    """OPA's boolean query parameters: present without a value, or `true`."""
    return name in request.query_params and request.query_params[name] in ("", "true")


class OPAServer:
    def __init__(self, policy_dir: Path, bundle_revision: str | None = None) -> None:
        self.policy_dir = Path(policy_dir)
        self.bundle_revision = bundle_revision
        self.fail: tuple[int, str, str] | None = None  # (status, code, message)
        self.delay_s = 0.0
        self.healthy = True
        self.bundles_activated = True
        self.requests: list[tuple[str, str]] = []  # (method, path?query) of every call
        self.inputs: list[Any] = []  # the input of every data API call
        self.in_flight = 0
        self.max_in_flight = 0  # the most data/query calls answered at once
        self._engine: Any = None
        self._served: Served | None = None
        self._port = 0  # kept across stop(), for restart()

    @property
    def url(self) -> str:
        assert self._served is not None, "start() first"
        return self._served.url

    async def start(self, sock: socket.socket | None = None) -> "OPAServer":
        """Serve on `sock` (a bound socket, e.g. one that refused connections until now) or a free port."""
        self.reload()
        app = Starlette(routes=[
            Route("/v1/data/{path:path}", self._data, methods=["GET", "POST"]),
            Route("/v1/data", self._data, methods=["GET", "POST"]),
            Route("/v1/query", self._query, methods=["POST"]),
            Route("/health", self._health, methods=["GET"]),
        ])
        sock = sock or free_socket()
        # Accepted connections inherit it: without it each answer (headers, then body, two
        # writes) waits ~40 ms for the client's delayed ACK (asyncio only sets it itself on
        # sockets made with proto=IPPROTO_TCP, and free_socket()'s is proto 0).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                               timeout_graceful_shutdown=1))
        task = asyncio.create_task(server.serve(sockets=[sock]))
        await eventually_async(lambda: server.started or task.done(), "the OPA test server to listen")
        if task.done():
            task.result()
        self._served = Served(server, task, sock.getsockname()[1])
        self._port = self._served.port
        return self

    async def stop(self) -> None:
        if self._served is not None:
            await self._served.stop()
            self._served = None
        self._engine = None  # dropped on the loop thread that made it

    async def restart(self) -> "OPAServer":
        """Stop, then serve again on the same port (OPA's container restarting)."""
        port = self._port
        await self.stop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return await self.start(sock)

    def reload(self) -> None:
        """Load the policy directory again (call on the serving loop's thread)."""
        self._engine = build_engine(collect(self.policy_dir))

    # ---- endpoints -------------------------------------------------------------------

    async def _gate(self, request: Request) -> Response | None:
        self.requests.append((request.method, request.url.path + ("?" + request.url.query if request.url.query else "")))
        if self.fail is not None:
            return _error(*self.fail)
        return None

    async def _counted(self, request: Request, handler: Any) -> Response:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            return await handler(request)
        finally:
            self.in_flight -= 1

    async def _body(self, request: Request) -> tuple[dict[str, Any] | None, Response | None]:
        raw = await request.body()
        if not raw:
            return {}, None
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return None, _error(400, "invalid_parameter", f"body contains malformed input document: {e}")
        if not isinstance(doc, dict):
            return None, _error(400, "invalid_parameter", "body must be an object")
        return doc, None

    def _set_input(self, doc: dict[str, Any]) -> None:
        # OPA leaves input undefined without an `input` key; an empty object is the nearest here.
        self._engine.set_input_json(orjson.dumps(doc.get("input", {})).decode())

    async def _data(self, request: Request) -> Response:
        return await self._counted(request, self._data_answer)

    async def _query(self, request: Request) -> Response:
        return await self._counted(request, self._query_answer)

    async def _data_answer(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        body: dict[str, Any] = {}
        if request.method == "POST":
            doc, bad = await self._body(request)
            if bad is not None:
                return bad
            body = doc or {}
        self.inputs.append(body.get("input"))
        path = request.path_params.get("path", "").strip("/")
        ref = "data" + "".join(f".{seg}" for seg in path.split("/") if seg)
        try:
            self._set_input(body)
            result = self._engine.eval_rule(ref)
        except Exception as e:  # an evaluation error (e.g. a conflict) is OPA's 500
            return _error(500, "internal_error", error_text(e))
        out: dict[str, Any] = {} if result is None else {"result": result}
        if _flag(request, "provenance"):
            out["provenance"] = self._provenance()
        return _json(out)

    async def _query_answer(self, request: Request) -> Response:
        if (refused := await self._gate(request)) is not None:
            return refused
        doc, bad = await self._body(request)
        if bad is not None:
            return bad
        query = (doc or {}).get("query")
        if not isinstance(query, str) or not query:
            return _error(400, "invalid_parameter", "missing query")
        try:
            self._set_input(doc or {})
            rows = self._engine.eval_query(query).get("result") or []
        except Exception as e:
            return _error(400 if "parse" in str(e).lower() else 500, "internal_error", error_text(e))
        bindings = [r.get("bindings", {}) for r in rows]
        return _json({"result": bindings} if bindings else {})

    def decided_for(self) -> list[str]:
        """Agent ids of the data API decisions asked so far, without the adapter's health probes."""
        return [i["agent"]["id"] for i in self.inputs
                if isinstance(i, dict) and isinstance(i.get("agent"), dict) and i["agent"].get("id") != "smoke-test"]

    async def _health(self, request: Request) -> Response:
        self.requests.append((request.method, request.url.path))
        if not self.healthy:
            return _json({"error": "unable to perform evaluation"}, 500)
        if "bundles" in request.query_params and not self.bundles_activated:
            return _json({"error": "not all configured bundles have been activated"}, 500)
        return _json({})

    def _provenance(self) -> dict[str, Any]:
        p: dict[str, Any] = {"version": "0.0.0-portcullis-test", "build_commit": "test",
                             "build_timestamp": "", "build_host": "127.0.0.1"}
        if self.bundle_revision is not None:
            p["bundles"] = {"portcullis": {"revision": self.bundle_revision}}
        return p


def main() -> None:
    """`python -m tests.support.opa_server DIR PORT`: serve until killed (bench runs it as a sidecar)."""
    import sys

    async def run() -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", int(sys.argv[2])))
        await OPAServer(Path(sys.argv[1])).start(sock)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(run())


if __name__ == "__main__":
    main()
