"""The CLI's side of the admin API: one httpx call per command, errors as AdminError."""
from __future__ import annotations

from typing import Any, Self


class AdminError(Exception):
    """The API refused or could not be reached: the message is printed, the exit code is 1."""


def base_url(host: str, port: int) -> str:
    if host in ("0.0.0.0", "", "::"):  # a wildcard bind is reached on loopback
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class AdminClient:
    def __init__(self, url: str, token: str, *, timeout_s: float = 60.0) -> None:
        import httpx  # control plane: httpx, as everywhere outside the forwarding path

        self._httpx = httpx
        self._url = url.rstrip("/")
        self._client = httpx.Client(base_url=self._url, timeout=timeout_s,
                                    headers={"authorization": f"Bearer {token}"})

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._client.close()

    def call(self, method: str, path: str, *, params: dict[str, Any] | None = None,
             body: dict[str, Any] | None = None, raw: bool = False) -> Any:
        params = {k: v for k, v in (params or {}).items() if v is not None}
        try:
            r = self._client.request(method, path, params=params, json=body)
        except self._httpx.HTTPError as e:
            raise AdminError(f"cannot reach the admin API at {self._url}: {e}") from None
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
                detail = f"{err.get('code')}: {err.get('message')}"
            except (ValueError, KeyError, TypeError):
                detail = r.text[:200]
            raise AdminError(f"{method} {path} failed ({r.status_code}) {detail}")
        return r.text if raw else r.json()
