"""Admin API helpers for the tests: two tokens (read, and read+write), the overrides that
configure them, and the admin listener's URL of a running gateway."""
from __future__ import annotations

from typing import Any

import httpx

from gateway.keys import hash_key
from tests.support.harness import Gateway

WRITE_TOKEN = "pat-test-writer-0123456789abcdef"
READ_TOKEN = "pat-test-reader-0123456789abcdef"
WRITER, READER = "ops-writer", "ops-reader"


def admin_overrides() -> dict[str, Any]:
    """gateway_config/make_gateway overrides: the admin listener on a free port with both tokens."""
    return {"admin__port": 0, "admin__tokens": [
        {"name": WRITER, "sha256": hash_key(WRITE_TOKEN), "scopes": ["read", "write"]},
        {"name": READER, "sha256": hash_key(READ_TOKEN), "scopes": ["read"]},
    ]}


def admin_url(gw: Gateway) -> str:
    return gw.admin_url  # the harness's: app.state.admin.port


def admin(gw: Gateway, token: str | None = WRITE_TOKEN) -> httpx.Client:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=admin_url(gw), headers=headers, timeout=30)
