"""Typed settings, loaded from YAML. Validation errors name the key path.

Everything the running gateway needs is resolved here, once, including provider
keys from the environment mapping passed in: nothing deeper reads os.environ.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gateway.types import MATURITIES


class ConfigError(Exception):
    """A configuration problem; `problems` is a list of (key path, reason)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("\n".join(f"{path}: {reason}" for path, reason in problems))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(_Model):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)
    trust_forwarded_for: bool = False  # take client_ip from X-Forwarded-For


class JWTSettings(_Model):
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


class IdentitySettings(_Model):
    agents_file: str = "agents.yaml"
    anonymous_agent: str | None = None  # off unless named explicitly
    jwt: JWTSettings | None = None


class PolicySettings(_Model):
    backend: str = "regorus"
    dir: str = "../policies_rego"
    fail: Literal["closed", "open"] = "closed"
    hot_reload: bool = True
    default_cache_ttl_s: int = Field(60, ge=0)
    clamp_max_output_tokens: bool = False  # clamp instead of refusing with 400
    # compiled: regorus' compiled program, once it agrees with the interpreter on a corpus
    # derived from the set's data (see adapters/policy/compiled.py); interpreter: always.
    evaluator: Literal["compiled", "interpreter"] = "compiled"


class CacheSettings(_Model):
    backend: str = "memory"
    max_entries: int = Field(100_000, gt=0)  # least recently used decisions go first beyond this


class LimitsSettings(_Model):
    backend: str = "memory"  # memory (one process) | redis (exact across replicas) | module:Class
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Keys of one gateway fleet share this prefix; no braces: the agent id is the cluster hash tag.
    key_prefix: str = Field("portcullis:limits:", pattern=r"^[^{}]*$")
    redis_timeout_s: float = Field(0.5, gt=0)  # per command; a slower Redis is treated as down
    # Token settles are summed per agent and sent together within this many ms (0: one
    # round trip per request). Returns come back late, which only ever admits less.
    settle_flush_ms: int = Field(20, ge=0)
    redis_pool_size: int = Field(32, gt=0)  # connections per replica
    redis_pool_wait_s: float = Field(5.0, gt=0)  # longest wait for a free one (a burst is not an outage)


class AuditSettings(_Model):
    backend: str = "sqlite"  # sqlite (embedded) | postgres (fleet) | module:Class
    path: str = "var/audit.db"  # sqlite file
    dsn: str = "postgresql://127.0.0.1:5432/portcullis"  # postgres
    table: str = Field("audit_log", pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    pool_min_size: int = Field(1, ge=0)  # postgres connection pool, per replica
    pool_max_size: int = Field(4, gt=0)
    timeout_s: float = Field(5.0, gt=0)  # postgres: connect and each statement; slower is down
    spool_path: str = "var/audit.spool"
    chain_id: str = Field(default_factory=socket.gethostname)
    batch_size: int = Field(500, gt=0)
    flush_interval_ms: int = Field(50, gt=0)
    queue_max: int = Field(10000, gt=0)
    on_full: Literal["wait", "refuse"] = "wait"
    full_wait_s: float = Field(5.0, ge=0)
    retry_interval_s: float = Field(2.0, gt=0)


class UpstreamSettings(_Model):
    provider: Literal["openai", "anthropic", "mock"]
    base_url: str | None = None
    api_key_env: str | None = None
    api_key: str | None = Field(None, exclude=True, repr=False)  # resolved at load, never logged
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)
    max_connections: int = Field(256, gt=0)
    anthropic_version: str = "2023-06-01"

    @model_validator(mode="after")
    def _needs_url(self) -> "UpstreamSettings":
        if self.provider != "mock" and not self.base_url:
            raise ValueError(f"provider {self.provider} needs base_url")
        return self


class RouteSettings(_Model):
    match: str  # glob on the model name, e.g. "gpt-*"
    upstream: str
    models: list[str] = []  # concrete names offered by GET /v1/models (globs cannot be listed)


_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"  # tool and server names: URL- and function-name-safe


class _ToolEndpoint(_Model):
    url: str = Field(pattern=r"^https?://")
    api_key_env: str | None = None  # sent as "Authorization: Bearer ..."; never the agent's credential
    api_key: str | None = Field(None, exclude=True, repr=False)  # resolved at load
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(120.0, gt=0)  # between bytes: long tool calls stream progress
    max_connections: int = Field(100, gt=0)


class MCPServerSettings(_ToolEndpoint):
    kind: Literal["mcp"] = "mcp"  # MCP over Streamable HTTP
    annotations_ttl_s: int = Field(300, ge=0)  # how long tools/list annotations are trusted


class HTTPToolSettings(_ToolEndpoint):
    method: Literal["POST", "PUT", "GET"] = "POST"
    # Policy input for the tool, like an MCP tool's annotations (readOnlyHint, destructiveHint).
    annotations: dict[str, bool] = {}


class ToolsSettings(_Model):
    servers: dict[str, MCPServerSettings] = {}
    http: dict[str, HTTPToolSettings] = {}
    # Refuse chat requests that offer the model a tool the agent may not call.
    check_chat_tools: bool = True
    # Function names in chat requests mapped to governed tools ("server.tool" or an HTTP tool
    # name), besides the names recognised by themselves: server.tool, server__tool, mcp__server__tool.
    chat_tool_names: dict[str, str] = {}

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


class LoggingSettings(_Model):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Model):
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


# ---- agents file -----------------------------------------------------------------

class AgentEntry(_Model):
    id: str
    tier: int = Field(ge=0, le=4)
    maturity: str
    workspace: str
    labels: dict[str, str] = {}
    revoked: bool = False

    @field_validator("maturity")
    @classmethod
    def _maturity(cls, v: str) -> str:
        if v not in MATURITIES:
            raise ValueError(f"must be one of {', '.join(MATURITIES)}")
        return v


class KeyEntry(_Model):
    id: str  # a non-secret label, safe to log and audit
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    workspace: str
    agent: str | None = None  # pinned agent; None = workspace key


class WorkspaceEntry(_Model):
    default_agent: str | None = None


class AgentsFile(_Model):
    workspaces: dict[str, WorkspaceEntry] = {}
    agents: list[AgentEntry] = []
    keys: list[KeyEntry] = []

    @model_validator(mode="after")
    def _references(self) -> "AgentsFile":
        by_id = {a.id: a for a in self.agents}
        if len(by_id) != len(self.agents):
            raise ValueError("agents: duplicate agent id")
        for name, ws in self.workspaces.items():
            if ws.default_agent and by_id.get(ws.default_agent, None) is None:
                raise ValueError(f"workspaces.{name}.default_agent: unknown agent {ws.default_agent!r}")
        for i, k in enumerate(self.keys):
            if k.agent and (k.agent not in by_id or by_id[k.agent].workspace != k.workspace):
                raise ValueError(f"keys.{i}.agent: {k.agent!r} is not an agent of workspace {k.workspace!r}")
        return self


# ---- loading ---------------------------------------------------------------------

def _problems(exc: ValidationError, prefix: str = "") -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        out.append((prefix + (loc or "(root)"), msg))
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        # libyaml's loader when present: a 5,000-agent file loads in 1.2 s instead of 5.7 s.
        doc = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except FileNotFoundError:
        raise ConfigError([(str(path), "file not found")]) from None
    except yaml.YAMLError as e:
        raise ConfigError([(str(path), f"invalid YAML: {e}")]) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError([(str(path), "top level must be a mapping")])
    return doc


def load_settings(path: str | Path, environ: Mapping[str, str]) -> Settings:
    """Load and validate a config file, resolving secrets from `environ`."""
    path = Path(path).resolve()
    doc = _read_yaml(path)
    doc["base_dir"] = str(path.parent)
    try:
        settings = Settings.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(_problems(e)) from None
    problems: list[tuple[str, str]] = []
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
    if problems:
        raise ConfigError(problems)
    identity = settings.identity.model_copy(update={"jwt": jwt})
    return settings.model_copy(update={"upstreams": upstreams, "identity": identity, "tools": tools})


def load_agents(path: Path) -> AgentsFile:
    doc = _read_yaml(path)
    try:
        return AgentsFile.model_validate(doc)
    except ValidationError as e:
        raise ConfigError(_problems(e, prefix=f"{path.name}: ")) from None


def check(path: str | Path, environ: Mapping[str, str]) -> list[tuple[str, str]]:
    """Every problem with a config file and the files it names; empty when valid."""
    try:
        settings = load_settings(path, environ)
    except ConfigError as e:
        return e.problems
    problems: list[tuple[str, str]] = []
    try:
        load_agents(settings.path(settings.identity.agents_file))
    except ConfigError as e:
        problems += [(f"identity.agents_file ({p})", r) for p, r in e.problems]
    if not settings.path(settings.policy.dir).is_dir():
        problems.append(("policy.dir", f"not a directory: {settings.path(settings.policy.dir)}"))
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
