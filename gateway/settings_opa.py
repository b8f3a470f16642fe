"""Settings of the OPA policy backend (`policy.opa`) and the shared Redis L2 decision cache (`cache.l2`).

Kept out of settings.py so that module stays small; settings.py adds one field each.
"""
from __future__ import annotations

from typing import Mapping
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from gateway.configbase import Model


class OPASettings(Model):
    """`policy.backend: opa`: decisions come from an OPA server (the pod's sidecar)."""
    url: str = "http://127.0.0.1:8181"
    timeout_s: float = Field(0.25, gt=0)  # per call; a slower OPA is a failed decision (fail closed)
    max_connections: int = Field(16, gt=0)  # the bounded pool: callers beyond it wait, within timeout_s
    decision_path: str = Field("portcullis/decision", pattern=r"^[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*$")
    # How often OPA's health and bundle revision are polled (the revision keys the decision cache).
    poll_s: float = Field(2.0, gt=0)

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
            raise ValueError("must be http(s)://host[:port], without a path")
        return v


class L2CacheSettings(Model):
    """A decision cache in Redis shared by every replica, behind each replica's in-process L1."""
    redis_url_env: str | None = None  # names the variable holding the URL; it overrides redis_url
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)  # may hold a password
    key_prefix: str = "portcullis:decisions:"
    timeout_s: float = Field(0.05, gt=0)  # per command; a slower Redis is a miss, never an allow
    pool_size: int = Field(16, gt=0)


def resolve_l2(l2: L2CacheSettings | None, environ: Mapping[str, str]) -> tuple[L2CacheSettings | None, list[tuple[str, str]]]:
    """`cache.l2.redis_url_env` resolved from `environ`; an unset variable is a config problem."""
    if l2 is None or not l2.redis_url_env:
        return l2, []
    url = environ.get(l2.redis_url_env)
    if not url:
        return l2, [("cache.l2.redis_url_env", f"environment variable {l2.redis_url_env} is not set")]
    return l2.model_copy(update={"redis_url": url}), []
