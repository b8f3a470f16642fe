"""The test upstream, also keeping every raw body it received (LLM requests carry no request id)."""
from __future__ import annotations

from dataclasses import dataclass, field

from starlette.requests import Request
from starlette.responses import Response

from tests.support.upstream_server import UpstreamServer


@dataclass
class RecordingUpstream(UpstreamServer):
    bodies: list[bytes] = field(default_factory=list)

    async def _handle(self, request: Request) -> Response:
        self.bodies.append(await request.body())  # Starlette keeps the body for the next read
        return await super()._handle(request)

    def body_with(self, marker: bytes) -> list[bytes]:
        return [b for b in self.bodies if marker in b]
