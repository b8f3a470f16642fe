"""The `lifecycle:` and `admin:` sections (contracts 6 and 7), kept apart so settings.py stays small.

What counts as an error, the budgets and the promotion thresholds are policy data (data.json,
`data.portcullis.config.lifecycle`); these settings say where the state lives, how changes
travel between replicas, where events go and who may operate the gateway.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gateway.configbase import Model


class WebhookSettings(Model):
    # A Slack webhook URL is itself the secret: give `url_env` (the variable holding it) outside a demo.
    url: str = Field("", repr=False)
    url_env: str | None = None  # wins over url

    @model_validator(mode="after")
    def _one_url(self) -> WebhookSettings:
        if not self.url and not self.url_env:
            raise ValueError("a webhook needs url or url_env")
        return self
    format: Literal["slack", "json"] = "json"  # Slack-compatible {"text", "blocks"} or the event as JSON
    min_severity: Literal["HIGH", "CRITICAL"] = "HIGH"
    timeout_s: float = Field(5.0, gt=0)


class RiskSettings(Model):
    """Risk score 0-100 from the events in a window: severity weights summed, capped at 100."""
    window_s: float = Field(7 * 86400.0, gt=0)
    severity_weights: dict[str, int] = {"CRITICAL": 25, "HIGH": 15, "MEDIUM": 5, "LOW": 1}
    # The categories' share of the overall score (security, cost, reliability, compliance).
    category_weights: dict[str, float] = {"security": 1.0, "cost": 1.0, "reliability": 1.0, "compliance": 1.0}


class LifecycleSettings(Model):
    enabled: bool = True
    store: str = "sqlite"  # sqlite (embedded, beside the audit database) | postgres (fleet) | module:Class
    path: str = "var/lifecycle.db"  # sqlite file, relative to the config file
    dsn_env: str | None = None  # names the variable holding the DSN; it overrides dsn
    dsn: str = Field("postgresql://127.0.0.1:5432/portcullis", repr=False)
    table_prefix: str = Field("portcullis_", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,30}$")
    bus: str = "memory"  # memory (one process) | redis (a fleet: pub/sub) | module:Class
    redis_url_env: str | None = None
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)
    channel: str = "portcullis:lifecycle"
    # Every replica also re-reads the whole overlay this often: the bound on a lost message.
    refresh_s: float = Field(30.0, gt=0)
    # Count finished requests against the policy's error budgets (automatic revocation, the 80%
    # warning, promotion proposals). Off: revocations, approvals and switches still work, set by hand.
    error_budgets: bool = True
    # Outcomes wait here to be counted off the request path; full: the oldest are dropped, counted.
    count_queue_max: int = Field(10000, gt=0)
    # Outcomes are counted in batches this often (merged per agent): a revocation waits at most this.
    count_flush_ms: int = Field(50, ge=0)
    approval_ttl_s: float = Field(900.0, gt=0)  # an approval must be used within this
    webhooks: list[WebhookSettings] = []
    webhook_queue_max: int = Field(1000, gt=0)
    webhook_retries: int = Field(5, ge=0)
    webhook_backoff_s: float = Field(0.5, gt=0)  # doubled per retry
    risk: RiskSettings = RiskSettings()
    # The emergency bypass and per-surface governance at start; both also settable at runtime
    # through the admin API (stored as flags, so every replica follows).
    bypass: bool = False
    governance: dict[Literal["openai", "anthropic", "mcp", "tools"], bool] = {}  # surface -> governed (default true)


class AdminToken(Model):
    name: str  # the operator, as audited
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")  # `portcullis keys new` prints one
    scopes: list[Literal["read", "write"]] = ["read"]


class AdminSettings(Model):
    enabled: bool = True
    host: str = "127.0.0.1"  # its own listener, local by default
    port: int = Field(8081, ge=0, le=65535)
    tokens: list[AdminToken] = []
    # The console's session-signing secret (gateway/console/session.py). The token hashes above are
    # not secret, so they cannot sign sessions. Unset: a random key per process, so a session is
    # good on one replica until it restarts; a fleet behind one URL gives every replica the same
    # secret through `console_secret_env` (the variable holding it, from a Secret; it wins).
    console_secret: str | None = Field(None, min_length=32)
    console_secret_env: str | None = None
