"""Model name -> upstream name, by the configured glob routes (first match wins)."""
from __future__ import annotations

from fnmatch import fnmatchcase

from gateway.settings import RouteSettings


class ModelRouter:
    def __init__(self, routes: list[RouteSettings]) -> None:
        self._routes = [(r.match, r.upstream) for r in routes]
        self._memo: dict[str, str | None] = {}
        self.catalog: list[tuple[str, str]] = [(m, r.upstream) for r in routes for m in r.models]

    def route(self, model: str) -> str | None:
        try:
            return self._memo[model]
        except KeyError:
            pass
        hit = next((up for pat, up in self._routes if fnmatchcase(model, pat)), None)
        if len(self._memo) < 10000:  # model names come from clients: bound the memo
            self._memo[model] = hit
        return hit
