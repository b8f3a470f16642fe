"""create_app(settings) -> an ASGI app: the whole stack, assembled in one place."""
from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

from starlette.routing import Route, Router

from gateway import registry
from gateway.admin.listener import AdminListener, admin_listener
from gateway.agents_file import load_agents
from gateway.agents_reload import AgentsReloader
from gateway.audit.writer import AuditWriter
from gateway.bodyread import BodyReader
from gateway.breaker import Clock, GuardedTransport, breakers_for
from gateway.directory import AgentDirectory
from gateway.drain import Drain
from gateway.endpoints import ModelsHandler, OpsEndpoints, not_found, surface_for
from gateway.exchange import Governed, refuse_websocket
from gateway.lifecycle.overlay import Overlay
from gateway.lifecycle.runtime import Lifecycle
from gateway.mcp.client import ToolLister
from gateway.mcp.routes import mcp_routes
from gateway.metrics import Metrics
from gateway.pipeline import LLMHandler
from gateway.readiness import Check, Readiness, Reconnector, dependency_checks
from gateway.routing import ModelRouter
from gateway.services import RequestIds, Services
from gateway.settings import ConfigError, Settings
from gateway.shadow.runner import ShadowRunner
from gateway.stages.identity import IdentityResolver
from gateway.stages.limits import LimitStage
from gateway.stages.policy import PolicyStage
from gateway.surfaces import anthropic, openai
from gateway.surfaces import tools as tools_surface
from gateway.tools.catalog import ToolCatalog
from gateway.tools.govern import ToolGovernor
from gateway.tools.http_endpoint import HTTPToolHandler

log = logging.getLogger("portcullis.app")


def build_services(settings: Settings, clock: Clock = time.monotonic) -> tuple[Services, list[Any], Any]:
    """Construct every backend (no I/O yet) and the Services bundle (`clock` times the breakers).

    Returns the services, the backends in start order, and the audit store.
    """
    metrics = Metrics()
    agents_file = settings.path(settings.identity.agents_file)
    directory = AgentDirectory.from_file(load_agents(agents_file))
    lifecycle: Lifecycle | None = None  # built below; the system hooks reach it once it is

    def emit(event_type: str, severity: str, details: dict[str, Any]) -> None:
        if lifecycle is not None:
            lifecycle.events.emit(event_type, severity, details=details)

    def on_policy_reload(revision: str | None, error: Exception | None) -> None:
        metrics.on_policy_reload(revision, error)
        if error is not None:
            emit("policy.reload_rejected", "HIGH", {"error": str(error)[:2000]})
        elif lifecycle is not None:  # an accepted reload (start is not one): the policy page lists both kinds
            emit("policy.reloaded", "LOW", {"revision": revision, "replica": lifecycle.replica["replica_id"]})
            lifecycle.heartbeat_soon()  # the replica list shows the new revision now

    # The tiers and maturities are the loaded policy's: a set that drops one an agent has is
    # refused (at start too), and so are an agents file and JWT claims that step outside them.
    engine = registry.load("policy", settings.policy.backend)(
        settings.policy, settings.path(settings.policy.dir), on_reload=on_policy_reload,
        check_vocabulary=directory.vocabulary_problems)
    sources: list[Any] = [registry.load("identity", "api_key")(directory)]
    if settings.identity.jwt is not None:
        sources.append(registry.load("identity", "jwt")(settings.identity.jwt, base_dir=settings.base_dir,
                                                        vocabulary=lambda: engine.vocabulary))
    cache = registry.load("cache", settings.cache.backend)(settings.cache)
    if settings.cache.l2 is not None:  # a Redis cache shared by the replicas, behind this L1
        cache = registry.load("cache_l2", "redis")(settings.cache.l2, cache)
    limiter = registry.load("limits", settings.limits.backend)(settings.limits)
    store = registry.load("audit", settings.audit.backend)(settings.audit, settings.path(settings.audit.path))
    writer = AuditWriter(store, settings.audit, settings.path(settings.audit.spool_path), metrics,
                         on_spool=lambda d: emit("audit.spooling", "HIGH", d))
    metrics.watch_spool(settings.path(settings.audit.spool_path))
    request_ids = RequestIds()
    overlay = Overlay(lambda: engine.vocabulary)  # revocations and overrides, seen by identity
    lifecycle_backends: list[Any] = []
    if settings.lifecycle.enabled:
        lifecycle_backends = build_lifecycle(settings, overlay, engine, directory, writer, store, request_ids)
        lifecycle = lifecycle_backends[-1]
    upstreams = {name: registry.load("upstream", u.provider)(name, u) for name, u in settings.upstreams.items()}
    tools = settings.tools
    transports = {**{n: registry.load("tools", t.kind)(n, t) for n, t in tools.servers.items()},
                  **{n: registry.load("tools", "http")(n, t) for n, t in tools.http.items()}}
    sessions = registry.load("sessions", tools.session_store)(settings.limits)  # MCP session -> agent
    # No decision while the audit chain cannot continue (store not reached since start): 503.
    policy = PolicyStage(engine, cache, metrics, fail_open=settings.policy.fail == "open", gate=writer.unready,
                         bypassed=lifecycle.switches.bypass_reason if lifecycle is not None else None,
                         on_fail_open=lambda d: emit("policy.fail_open", "CRITICAL", d))
    catalog = ToolCatalog({n: t.annotations_ttl_s for n, t in tools.servers.items()})
    breakers = breakers_for(settings, metrics, clock)
    # The gateway's own tools/list calls pass the server's breaker too: none while it is open.
    lister = ToolLister({n: GuardedTransport(t, breakers.tool(n)) for n, t in transports.items()}, catalog)
    identity = IdentityResolver(sources, directory, settings.identity.anonymous_agent, overlay)

    def check_agents(candidate: AgentDirectory) -> None:
        identity.check_directory(candidate)
        if problems := candidate.vocabulary_problems(engine.vocabulary):
            raise ConfigError([(settings.identity.agents_file, p) for p in problems])

    agents = AgentsReloader(agents_file, directory, hot_reload=settings.identity.hot_reload,
                            check=check_agents, on_reload=metrics.on_agents_reload)
    # Off: no tracer at all (the OTel SDK is not even imported), so requests skip every span.
    tracer = registry.load("tracing", "otel")(settings.tracing) if settings.tracing.enabled else None
    services = Services(
        settings=settings,
        identity=identity,
        policy=policy,
        limits=LimitStage(limiter, metrics),
        router=ModelRouter(settings.routes, settings.upstreams),
        upstreams=upstreams,
        audit=writer,
        metrics=metrics,
        bodies=BodyReader(settings.server.max_body_bytes, settings.server.body_timeout_s),
        tools=ToolGovernor(tools, policy, catalog, lister.fetch, approvals=lifecycle is not None),
        tool_transports=transports,
        breakers=breakers,
        tracer=tracer,
        sessions=sessions,
        request_ids=request_ids,
        lifecycle=lifecycle,
        shadow=build_shadow(settings, writer.submit, metrics, emit),
    )
    # Start order: audit first (so every request can be recorded), the lifecycle after the
    # policy engine (its rules), upstreams last; the admin listener once everything serves.
    # The shadow runner closes before the writer: it hands over the rows it still holds.
    shadow = [services.shadow] if services.shadow is not None else []
    backends = [store, writer, services.bodies, engine, *shadow, *lifecycle_backends, cache, limiter, sessions,
                agents, *sources, *upstreams.values(), *transports.values()]
    if (admin := admin_listener(settings, services)) is not None:
        backends.append(admin)
    if tracer is not None:  # closed last: a slow collector must not delay the audit flush
        backends.insert(0, tracer)
    return services, backends, (store, engine)


def build_shadow(settings: Settings, submit: Any, metrics: Metrics, emit: Any) -> ShadowRunner | None:
    """policy.shadow: the candidate set on the embedded engine, whatever backend serves."""
    shadow = settings.policy.shadow
    if shadow is None:
        return None
    runner: ShadowRunner | None = None

    def on_reload(revision: str | None, error: Exception | None) -> None:
        if runner is not None:
            runner.on_reload(revision, error)

    engine = registry.load("policy", "regorus")(settings.policy.model_copy(update={"shadow": None}),
                                                settings.path(shadow.dir), on_reload=on_reload)
    runner = ShadowRunner(shadow, engine, submit, metrics.registry, emit)
    return runner


def build_lifecycle(settings: Settings, overlay: Overlay, engine: Any, directory: AgentDirectory,
                    writer: AuditWriter, audit_store: Any, request_ids: RequestIds) -> list[Any]:
    """The lifecycle store, its bus and the runtime over them, in start order (contract 6)."""
    lc = settings.lifecycle
    store_cls = registry.load("lifecycle_store", lc.store)
    # The embedded store lives in a file beside the audit database; the others take the settings.
    lstore = store_cls(lc, settings.path(lc.path)) if lc.store == "sqlite" else store_cls(lc)
    bus = registry.load("lifecycle_bus", lc.bus)(lc)
    runtime = Lifecycle(lc, lstore, bus, overlay, engine=engine, directory=lambda: directory,
                        record=writer.record, audit_store=audit_store, request_ids=request_ids)
    return [lstore, bus, runtime]


def create_app(settings: Settings, *, clock: Clock = time.monotonic) -> GatewayApp:
    services, backends, (store, engine) = build_services(settings, clock)
    drain = Drain(settings.server.drain_timeout_s)  # set by `portcullis serve` on SIGTERM

    def ready_check() -> list[str]:  # in-memory checks, fresh on every /readyz
        problems = ["draining: shutting down"] if drain.draining else []  # the Service stops routing here
        if not engine.revision:
            problems.append("policies not loaded")
        if (engine_problem := getattr(engine, "problem", None)) is not None:  # a remote engine (OPA) down
            problems.append(engine_problem)
        if (audit_problem := services.audit.problem) is not None:
            problems.append(audit_problem)
        return problems

    async def audit_writable() -> str | None:
        return None if await store.writable() else "audit store not writable"

    # Network dependencies (gateway/readiness.py): probed by /readyz, cached; reconnected when down at boot.
    readiness = Readiness(dependency_checks(backends) + [Check("audit_store", audit_writable)], ready_check,
                          settings.readiness, services.metrics)
    reconnector = Reconnector(settings.readiness, services.metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        started: list[Any] = []
        try:
            for b in backends:
                await reconnector.start(b)  # a Dependency that is down is retried in the background
                started.append(b)
            services.metrics.on_policy_reload(engine.revision, None)
            # What startup built (modules, settings, compiled policies, pools) lives as long as the
            # process: out of the collector's generations, it is not rescanned by every collection
            # the request path triggers (measured with `python -m bench ab`: ~9% less CPU a request).
            gc.collect()
            gc.freeze()
            log.info("portcullis ready", extra={"policy_revision": engine.revision})
            yield
        finally:
            await reconnector.aclose()
            # Reverse order: the audit writer closes last, after flushing every row.
            for b in reversed(started):
                try:
                    await b.aclose()
                except Exception:
                    log.exception("closing %s failed", type(b).__name__)

    ops = OpsEndpoints(services, readiness.report)
    s = services
    # Everything else is a 404 in the caller's format, audited; a bad credential is recorded
    # but does not turn the 404 into a 401.
    unknown = Governed(s, not_found, choose=surface_for, methods=None, identity="optional")
    exact: dict[str, Any] = {path: Governed(s, LLMHandler(s, surface, path), surface=surface)
                             for surface in (openai, anthropic) for path in surface.ACTIONS}
    models = Governed(s, ModelsHandler(s), choose=surface_for, methods=("GET",))
    exact["/v1/models"] = models
    routes = [
        Route("/v1/models/{model:path}", models),
        Route("/tools/{name}", Governed(s, HTTPToolHandler(s), surface=tools_surface)),
        *mcp_routes(s, drain),  # /mcp/{server}, and OAuth discovery when JWT issuers are configured
        Route("/healthz", ops.healthz),
        Route("/readyz", ops.readyz),
        Route("/metrics", ops.metrics),
        Route("/{path:path}", unknown),  # last
    ]
    # `default`: targets no route can match (`OPTIONS *`, a path without its leading /) get the
    # same audited 404 instead of Starlette's plain one; no unaudited slash redirects either.
    router = Router(routes=routes, lifespan=lifespan, default=unknown, redirect_slashes=False)
    app = GatewayApp(exact, router, services)
    app.state.drain = drain
    # The admin API's listener (None when off); its `port` is the bound one once the lifespan started it.
    app.state.admin = next((b for b in backends if isinstance(b, AdminListener)), None)
    return app


class GatewayApp:
    """The ASGI app: the hot exact paths by one dict lookup, the rest through Starlette's Router.

    No Starlette() middleware stack around it: every endpoint renders its own errors in
    its surface's format and audits itself, so ServerErrorMiddleware/ExceptionMiddleware
    (and a Request object built per call) would only add work to every request.
    """

    def __init__(self, exact: dict[str, Any], router: Router, services: Services) -> None:
        self._exact = exact
        self.router = router
        self.state = SimpleNamespace(services=services)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            endpoint = self._exact.get(scope["path"])
            if endpoint is not None:
                await endpoint(scope, receive, send)
                return
        elif scope["type"] == "websocket":
            await refuse_websocket(self.state.services, scope, receive, send)
            return
        await self.router(scope, receive, send)
