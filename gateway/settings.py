"""Typed settings, loaded from YAML. Validation errors name the key path.

Everything the running gateway needs is resolved here, once, including provider
keys from the environment mapping passed in: nothing deeper reads os.environ.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import Field, ValidationError, field_validator, model_validator

from gateway import registry
from gateway.agents_file import load_agents
from gateway.breaker import BreakerSettings
from gateway.configbase import ConfigError, Model, checked, problems_of, read_yaml
from gateway.mcp import origin
from gateway.readiness import ReadinessSettings
from gateway.settings_audit import AuditSettings
from gateway.settings_lifecycle import AdminSettings, LifecycleSettings
from gateway.settings_opa import L2CacheSettings, OPASettings, resolve_l2
from gateway.settings_shadow import ShadowSettings
from gateway.tracing import TracingSettings

__all__ = ["ConfigError", "Settings", "check", "load_settings"]


class ServerSettings(Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    # The whole body must arrive within this (408 after it), so a client that declares a
    # Content-Length and stalls cannot hold a connection and its task forever.
    body_timeout_s: float = Field(30.0, gt=0)
    # Request headers, checked before anything else (431): httptools itself has no limit.
    max_header_bytes: int = Field(64 * 1024, gt=0)  # names + values, summed
    max_headers: int = Field(100, gt=0)
    # Deepest JSON nesting (containers) a body may have, 400 beyond it; at most 254 because the
    # gateway re-serializes what it decided on and orjson's writer stops at 255.
    max_json_depth: int = Field(128, gt=0, le=254)
    trust_forwarded_for: bool = False  # take client_ip from X-Forwarded-For
    # The gateway's address as clients reach it (https://gateway.example.com): its host is
    # always allowed on /mcp, and it names the resource in OAuth protected-resource metadata.
    public_url: str | None = Field(None, pattern=r"^https?://[^/?#@]+/?$")
    # Host and Origin values /mcp accepts (DNS-rebinding protection, gateway/mcp/origin.py):
    # host names (any port), name:port or *; origins scheme://host[:port] or * beyond those hosts.
    allowed_hosts: list[Annotated[str, checked(origin.host_entry_problem)]] = list(origin.LOOPBACK)
    allowed_origins: list[Annotated[str, checked(origin.origin_entry_problem)]] = []
    drain_timeout_s: float = Field(25.0, ge=0)  # SIGTERM: how long in-flight streams may finish (drain.py)


class JWTSettings(Model):
    issuer: str
    audience: str
    algorithms: list[Literal["HS256", "HS384", "HS512", "RS256", "RS384", "RS512",
                             "ES256", "ES384", "PS256"]] = ["RS256"]
    jwks_url: str | None = None
    public_key: str | None = None  # PEM text
    public_key_file: str | None = None
    hs_secret_env: str | None = None  # name of the env var holding the HS secret
    hs_secret: str | None = Field(None, exclude=True, repr=False)  # resolved at load
    jwks_cache_s: int = Field(300, gt=0)
    leeway_s: int = Field(30, ge=0)
    # Claim names mapped onto the agent.
    claim_agent_id: str = "sub"
    claim_tier: str = "tier"
    claim_maturity: str = "maturity"
    claim_workspace: str = "workspace"
    # Longest token lifetime (exp - iat) accepted per tier, in seconds.
    max_ttl_s: dict[int, int] = {0: 3600, 1: 1800, 2: 1800, 3: 900, 4: 900}

    @model_validator(mode="after")
    def _one_key_source(self) -> "JWTSettings":
        sources = [s for s in (self.jwks_url, self.public_key, self.public_key_file,
                               self.hs_secret_env) if s]
        if len(sources) != 1:
            raise ValueError("set exactly one of jwks_url, public_key, public_key_file, hs_secret_env")
        uses_hs = any(a.startswith("HS") for a in self.algorithms)
        if uses_hs and not self.hs_secret_env:
            raise ValueError("HS algorithms need hs_secret_env (and asymmetric ones a public key)")
        if self.hs_secret_env and not all(a.startswith("HS") for a in self.algorithms):
            raise ValueError("hs_secret_env only goes with HS algorithms")
        return self


class IdentitySettings(Model):
    agents_file: str = "agents.yaml"
    hot_reload: bool = True  # swap in an edited agents file; a broken one is rejected, the old one kept
    anonymous_agent: str | None = None  # off unless named explicitly
    jwt: JWTSettings | None = None


class OutputCapSettings(Model):
    """Per surface, a request asking for more output tokens than its max_output_tokens
    obligation is clamped to it (with a response header saying so) or refused with 400.
    Anthropic clients (langchain-anthropic, litellm) send the model's maximum by default."""
    openai: Literal["clamp", "refuse"] = "refuse"
    anthropic: Literal["clamp", "refuse"] = "clamp"


class PolicySettings(Model):
    backend: str = "regorus"
    dir: str = "../policies_rego"
    fail: Literal["closed", "open"] = "closed"
    hot_reload: bool = True
    default_cache_ttl_s: int = Field(60, ge=0)
    max_output_tokens: OutputCapSettings = OutputCapSettings()
    # compiled: regorus' compiled program, once it agrees with the interpreter on a corpus
    # derived from the set's data (see adapters/policy/compiled.py); interpreter: always.
    evaluator: Literal["compiled", "interpreter"] = "compiled"
    opa: OPASettings = OPASettings()  # backend: opa (adapters/policy/opa.py)
    # A candidate set deciding sampled requests off the request path (gateway/shadow/); None: off.
    shadow: ShadowSettings | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_clamp(cls, data: Any) -> Any:
        """The older `clamp_max_output_tokens: true|false` sets one rule for every surface."""
        if not isinstance(data, dict) or "clamp_max_output_tokens" not in data:
            return data
        data = dict(data)
        old = data.pop("clamp_max_output_tokens")
        if "max_output_tokens" in data:
            raise ValueError("set max_output_tokens or the older clamp_max_output_tokens, not both")
        if not isinstance(old, bool):
            raise ValueError("clamp_max_output_tokens must be true or false")
        rule = "clamp" if old else "refuse"
        data["max_output_tokens"] = dict.fromkeys(OutputCapSettings.model_fields, rule)
        return data

    def clamps(self, surface: str) -> bool:
        return getattr(self.max_output_tokens, surface, "refuse") == "clamp"


class CacheSettings(Model):
    backend: str = "memory"
    max_entries: int = Field(100_000, gt=0)  # least recently used decisions go first beyond this
    l2: L2CacheSettings | None = None  # a shared Redis cache behind this L1 (adapters/cache/redis_l2.py)


class LimitsSettings(Model):
    backend: str = "memory"  # memory (one process) | redis (exact across replicas) | module:Class
    redis_url_env: str | None = None  # names the variable holding the URL; it overrides redis_url
    redis_url: str = Field("redis://127.0.0.1:6379/0", repr=False)  # may hold a password
    # Keys of one gateway fleet share this prefix; no braces: the agent id is the cluster hash tag.
    key_prefix: str = Field("portcullis:limits:", pattern=r"^[^{}]*$")
    redis_timeout_s: float = Field(0.5, gt=0)  # per command; a slower Redis is treated as down
    # Token settles are summed per agent and sent together within this many ms (0: one
    # round trip per request). Returns come back late, which only ever admits less.
    settle_flush_ms: int = Field(20, ge=0)
    redis_pool_size: int = Field(32, gt=0)  # connections per replica
    redis_pool_wait_s: float = Field(5.0, gt=0)  # longest wait for a free one (a burst is not an outage)


class UpstreamSettings(Model):
    provider: Literal["openai", "anthropic", "mock"]
    base_url: str | None = None
    api_key_env: str | None = None
    api_key: str | None = Field(None, exclude=True, repr=False)  # resolved at load, never logged
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    max_connections: int = Field(256, gt=0)
    anthropic_version: str = "2023-06-01"
    breaker: BreakerSettings | None = None  # fields set here override the top-level breaker

    @model_validator(mode="after")
    def _needs_url(self) -> "UpstreamSettings":
        if self.provider != "mock" and not self.base_url:
            raise ValueError(f"provider {self.provider} needs base_url")
        return self


class RouteSettings(Model):
    match: str  # glob on the model name, e.g. "gpt-*"
    upstream: str
    models: list[str] = []  # concrete names offered by GET /v1/models (globs cannot be listed)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # tool and server names: URL- and function-name-safe


class _ToolEndpoint(Model):
    url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None  # sent as "Authorization: Bearer ..."; never the agent's credential
    api_key: str | None = Field(None, exclude=True, repr=False)  # resolved at load
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)  # between bytes: long tool calls stream progress
    max_connections: int = Field(100, gt=0)
    breaker: BreakerSettings | None = None  # fields set here override the top-level breaker


class MCPServerSettings(_ToolEndpoint):
    kind: Literal["mcp"] = "mcp"  # MCP over Streamable HTTP
    annotations_ttl_s: int = Field(300, ge=0)  # how long tools/list annotations are trusted
    # Between bytes on a GET stream (the session's notification stream, a resumed one). None:
    # no limit, as the server may say nothing for hours; its keep-alive pings count as bytes.
    stream_read_timeout_s: float | None = Field(None, gt=0)


class HTTPToolSettings(_ToolEndpoint):
    method: Literal["POST", "PUT", "GET"] = "POST"
    # Policy input for the tool, like an MCP tool's annotations (readOnlyHint, destructiveHint).
    annotations: dict[str, bool] = {}


class ToolsSettings(Model):
    servers: dict[str, MCPServerSettings] = {}
    http: dict[str, HTTPToolSettings] = {}
    # Refuse chat requests that offer the model a tool the agent may not call.
    check_chat_tools: bool = True
    # Function names in chat requests mapped to governed tools ("server.tool" or an HTTP tool
    # name), besides the names recognised by themselves: server.tool, server__tool, mcp__server__tool.
    chat_tool_names: dict[str, str] = {}
    session_store: str = "memory"  # MCP session -> agent: memory (per replica) | redis (limits Redis, fleet)

    @model_validator(mode="after")
    def _names(self) -> "ToolsSettings":
        for group, names in (("servers", self.servers), ("http", self.http)):
            for n in names:
                if not re.match(_NAME, n):
                    raise ValueError(f"{group}.{n}: names are 1-64 letters, digits, '_' or '-'")
        clash = set(self.servers) & set(self.http)
        if clash:
            raise ValueError(f"{', '.join(sorted(clash))}: used as both an MCP server and an HTTP tool name")
        for fn, target in self.chat_tool_names.items():
            server, dot, tool = target.partition(".")
            if not (dot and server in self.servers and tool) and target not in self.http:
                raise ValueError(f"chat_tool_names.{fn}: {target!r} is neither server.tool of a "
                                 f"configured MCP server nor a configured HTTP tool")
        return self


class LoggingSettings(Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(Model):
    server: ServerSettings = ServerSettings()
    identity: IdentitySettings = IdentitySettings()
    policy: PolicySettings = PolicySettings()
    cache: CacheSettings = CacheSettings()
    limits: LimitsSettings = LimitsSettings()
    audit: AuditSettings = AuditSettings()
    upstreams: dict[str, UpstreamSettings]
    routes: list[RouteSettings]
    tools: ToolsSettings = ToolsSettings()
    logging: LoggingSettings = LoggingSettings()
    breaker: BreakerSettings = BreakerSettings()  # per upstream and tool server (gateway/breaker.py)
    readiness: ReadinessSettings = ReadinessSettings()  # /readyz probes, reconnecting at boot
    tracing: TracingSettings = TracingSettings()  # OpenTelemetry, off by default (gateway/tracing.py)
    lifecycle: LifecycleSettings = LifecycleSettings()  # agent state, budgets, approvals, events (contract 6)
    admin: AdminSettings = AdminSettings()  # the operators' API on its own listener (contract 7)
    base_dir: str = Field(".", exclude=True)  # directory of the config file; relative paths hang off it

    @field_validator("routes")
    @classmethod
    def _routes_nonempty(cls, v: list[RouteSettings]) -> list[RouteSettings]:
        if not v:
            raise ValueError("at least one route is needed")
        return v

    @model_validator(mode="after")
    def _routes_name_upstreams(self) -> "Settings":
        for i, r in enumerate(self.routes):
            if r.upstream not in self.upstreams:
                raise ValueError(f"routes.{i}.upstream: unknown upstream {r.upstream!r}")
        return self

    def path(self, p: str) -> Path:
        """Resolve a path from the config relative to the config file's directory."""
        q = Path(p)
        return q if q.is_absolute() else (Path(self.base_dir) / q).resolve()


# ---- loading ---------------------------------------------------------------------

def load_settings(path: str | Path, environ: Mapping[str, str]) -> Settings:
    """Load and validate a config file, resolving secrets from `environ`."""
    path = Path(path).resolve()
    doc = read_yaml(path)
    doc["base_dir"] = str(path.parent)
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(problems_of(e)) from None
    problems = _backend_problems(settings)
    tracing, tracing_problems = settings.tracing.resolved(environ)  # exporter headers from headers_env
    problems += tracing_problems
    settings = settings.model_copy(update={"tracing": tracing})
    upstreams = {}
    for name, up in settings.upstreams.items():
        key = environ.get(up.api_key_env) if up.api_key_env else None
        upstreams[name] = up.model_copy(update={"api_key": key})
    tools = settings.tools.model_copy(update={
        group: {name: t.model_copy(update={"api_key": environ.get(t.api_key_env) if t.api_key_env else None})
                for name, t in getattr(settings.tools, group).items()}
        for group in ("servers", "http")})
    jwt = settings.identity.jwt
    if jwt and jwt.hs_secret_env:
        secret = environ.get(jwt.hs_secret_env)
        if not secret:
            problems.append(("identity.jwt.hs_secret_env", f"environment variable {jwt.hs_secret_env} is not set"))
        jwt = jwt.model_copy(update={"hs_secret": secret})
    l2, l2_problems = resolve_l2(settings.cache.l2, environ)
    problems += l2_problems
    limits = _env_secret(settings.limits, "redis_url", "limits", environ, problems)
    audit = _env_secret(settings.audit, "dsn", "audit", environ, problems)
    lifecycle = _env_secret(settings.lifecycle, "dsn", "lifecycle", environ, problems)
    lifecycle = _env_secret(lifecycle, "redis_url", "lifecycle", environ, problems)
    lifecycle = lifecycle.model_copy(update={"webhooks": [
        _env_secret(w, "url", f"lifecycle.webhooks.{i}", environ, problems) for i, w in enumerate(lifecycle.webhooks)]})
    admin = _env_secret(settings.admin, "console_secret", "admin", environ, problems)
    if admin.console_secret is not None and len(admin.console_secret) < 32:
        problems.append(("admin.console_secret_env", "the console secret must be at least 32 characters"))
    if problems:
        raise ConfigError(problems)
    identity = settings.identity.model_copy(update={"jwt": jwt})
    return settings.model_copy(update={"upstreams": upstreams, "identity": identity, "tools": tools,
                                       "limits": limits, "audit": audit, "lifecycle": lifecycle, "admin": admin,
                                       "cache": settings.cache.model_copy(update={"l2": l2})})


def _env_secret(section: Any, field: str, key: str, environ: Mapping[str, str],
                problems: list[tuple[str, str]]) -> Any:
    """`<key>.<field>_env` names the variable holding `field` (a URL with a password); it wins."""
    env = getattr(section, f"{field}_env")
    if not env:
        return section
    if not (value := environ.get(env)):
        problems.append((f"{key}.{field}_env", f"environment variable {env} is not set"))
        return section
    return section.model_copy(update={field: value})


def _backend_problems(settings: Settings) -> list[tuple[str, str]]:
    """Backend names the registry does not know, and import strings that do not import."""
    named = [("policy.backend", "policy", settings.policy.backend),
             ("cache.backend", "cache", settings.cache.backend),
             ("limits.backend", "limits", settings.limits.backend),
             ("audit.backend", "audit", settings.audit.backend),
             ("tools.session_store", "sessions", settings.tools.session_store),
             *((f"upstreams.{n}.provider", "upstream", u.provider) for n, u in settings.upstreams.items()),
             *((f"tools.servers.{n}.kind", "tools", t.kind) for n, t in settings.tools.servers.items())]
    problems: list[tuple[str, str]] = []
    for key, seam, name in named:
        # A known name's adapter is imported when the app is built; only a name
        # outside the table needs loading now ("module:attribute" is imported).
        if ":" in name or name not in registry.BACKENDS[seam]:
            try:
                registry.load(seam, name)
            except registry.RegistryError as e:
                problems.append((key, str(e)))
    return problems


def check(path: str | Path, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every problem with a config file and the files it names; empty when valid."""
    try:
        settings = load_settings(path, environ)
    except ConfigError as e:
        return e.problems
    problems: list[tuple[str, str]] = []
    agents = None
    try:
        agents = load_agents(settings.path(settings.identity.agents_file))
    except ConfigError as e:
        problems += [(f"identity.agents_file ({p})", r) for p, r in e.problems]
    policy_dir = settings.path(settings.policy.dir)
    if not policy_dir.is_dir():
        problems.append(("policy.dir", f"not a directory: {policy_dir}"))
    else:  # what a load would refuse, and agents outside the set's tiers and maturities
        policy_problems, vocab = registry.import_from_string("adapters.policy.lint:check_policy_dir")(policy_dir)
        problems += [("policy.dir", p) for p in policy_problems]
        problems += [("identity.agents_file", p) for a in (agents.agents if agents else ())
                     for p in vocab.agent_problems(a.id, a.tier, a.maturity)]
    if (shadow := settings.policy.shadow) is not None:  # the candidate set: what its load would refuse
        shadow_dir = settings.path(shadow.dir)
        if not shadow_dir.is_dir():
            problems.append(("policy.shadow.dir", f"not a directory: {shadow_dir}"))
        else:
            check_dir = registry.import_from_string("adapters.policy.lint:check_policy_dir")
            problems += [("policy.shadow.dir", p) for p in check_dir(shadow_dir)[0]]
    for name, up in settings.upstreams.items():
        if up.api_key_env and not up.api_key:
            problems.append((f"upstreams.{name}.api_key_env",
                             f"environment variable {up.api_key_env} is not set"))
    for group in ("servers", "http"):
        for name, t in getattr(settings.tools, group).items():
            if t.api_key_env and not t.api_key:
                problems.append((f"tools.{group}.{name}.api_key_env",
                                 f"environment variable {t.api_key_env} is not set"))
    return problems
