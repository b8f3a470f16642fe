"""Model name -> upstream name, by the configured glob routes (first match wins)."""
from __future__ import annotations

from fnmatch import fnmatchcase
from typing import Mapping, NamedTuple

from gateway.settings import RouteSettings, UpstreamSettings


class Listed(NamedTuple):
    """A catalog model, as GET /v1/models offers it."""
    model: str
    upstream: str
    family: str  # the API it is served in: "openai" or "anthropic"


def family(provider: str, model: str) -> str:
    """The upstream's provider; on the mock, which speaks both APIs, the model's own family."""
    if provider == "mock":
        return "anthropic" if model.startswith("claude") else "openai"
    return provider


class ModelRouter:
    def __init__(self, routes: list[RouteSettings], upstreams: Mapping[str, UpstreamSettings]) -> None:
        self._routes = [(r.match, r.upstream) for r in routes]
        self._memo: dict[str, str | None] = {}
        self.catalog: list[Listed] = [Listed(m, r.upstream, family(upstreams[r.upstream].provider, m))
                                      for r in routes for m in r.models]

    def route(self, model: str) -> str | None:
        try:
            return self._memo[model]
        except KeyError:
            pass
        hit = next((up for pat, up in self._routes if fnmatchcase(model, pat)), None)
        if len(self._memo) < 10000:  # model names come from clients: bound the memo
            self._memo[model] = hit
        return hit
