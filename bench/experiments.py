"""`python -m bench ab`: measured what-ifs for the proposed optimizations (bench only).

Each experiment monkeypatches the running gateway *in the benchmark's own
server process* to approximate one proposed change, so its gain can be
measured before anyone edits gateway/ or adapters/. The patches are crude
stand-ins, not the changes themselves; nothing here is imported by the gateway.
They were written against commit de401e9; since a5b764d/b0dea4a the gateway does
most of them itself (exact-path dispatch, counter ids, bound metrics, its own
bounded cache, no proxy headers), so there they measure nothing or, for
"router", the older Router-only dispatch. Add new what-ifs here the same way.

    python -m bench ab [--duration 5] [--rounds 2] [--only router,request_id]

Serving: `python -m bench.experiments CONFIG PORT EXPERIMENTS` runs uvicorn as
`portcullis serve` does (uvloop, httptools), after applying the patches.
"""
from __future__ import annotations

import itertools
import os
import sys
from datetime import UTC
from typing import Any

# name -> what it approximates
EXPERIMENTS = {
    "router": "serve app.router (pure-ASGI routing) instead of Starlette(), skipping its "
              "ServerErrorMiddleware/ExceptionMiddleware, which build a Request per request",
    "no_proxy_headers": "uvicorn proxy_headers=False (the gateway has its own trust_forwarded_for)",
    "request_id": "request ids from a per-process random prefix + counter instead of uuid4()",
    "dict_cache": "decision cache as a plain dict with expiry instead of aiocache SimpleMemoryCache",
    "metrics_bound": "prometheus label children bound once (memoized .labels()) instead of per request",
    "audit_row_fast": "event_to_row without the _plain deep copy of policy_input and with a cheaper "
                      "timestamp formatter",
    "null_audit_store": "UPPER BOUND only: an audit store that discards rows (what the SQLite store costs)",
    "gc_freeze": "gc.freeze() once the app has started (adopted in gateway/app.py after this measured +9%)",
    "no_hot_reload": "policy and agents files not watched (no watcher threads)",
    "gc_threshold": "young-generation collections 10x rarer (adopted in `portcullis serve` after +4.9%)",
    "tracing": "tracing on: OTel spans for every request (sample_ratio 1.0), exported over OTLP/HTTP "
               "to a sink (bench/otlp_sink.py); the baseline has tracing off, the shipped default",
    "tracing_unsampled": "tracing on with sample_ratio 0: spans made but never recorded or exported",
    "no_journal": "audit.journal off: what journaling each row before its response ends costs (on by default)",
    "journal_fsync": "audit.journal_fsync on: an fdatasync per journal record (rows survive a host crash)",
    "journal_anon": "UPPER BOUND only, not durable: journal records stored into pre-touched anonymous memory "
                    "instead of the file mapping (what the file's page faults cost)",
    "no_lifecycle": "lifecycle.enabled false: what the agent lifecycle (issue 11: revocation check, "
                    "error-budget counting, its SQLite store) costs (on by default)",
    "shadow": "policy.shadow on at sample 1.0, the serving set as the candidate: every request also decided "
              "off the request path by a second engine (issue 12)",
    "shadow_10pct": "policy.shadow on at sample 0.1",
    "no_console_rollup": "UPPER BOUND only: the SQLite audit store without the console's rollup and indexes "
                         "(what keeping the console's per-minute counts costs the writer)",
    "no_console_count": "UPPER BOUND only: the console's indexes kept, its per-minute counts not",
    "all": "every change above except the upper bounds, no_lifecycle, shadow, the journal and the tracing ones",
}
JOURNAL = {"no_journal": ("journal", False), "journal_fsync": ("journal_fsync", True)}
TRACING = {"tracing": 1.0, "tracing_unsampled": 0.0}  # experiment -> sample_ratio


def _request_id() -> None:
    from gateway import pipeline

    prefix = os.urandom(8).hex()
    counter = itertools.count()

    class _Id:
        __slots__ = ("hex",)

        def __init__(self) -> None:
            self.hex = f"{prefix}{next(counter):016x}"

    class _Uuid:
        uuid4 = _Id

    pipeline.uuid = _Uuid  # type: ignore[assignment]


def _metrics_bound(app: Any) -> None:
    import functools

    m = app.state.services.metrics
    for name in ("requests", "cache", "upstream", "rate_limited"):
        metric = getattr(m, name, None)
        if metric is not None:
            metric.labels = functools.lru_cache(maxsize=4096)(metric.labels)


def _audit_row_fast() -> None:
    from datetime import datetime

    from gateway.audit import chain, writer

    original = chain.event_to_row
    utc = UTC

    def fast(event: Any) -> dict[str, Any]:
        pi = event.policy_input
        if pi is None or type(pi) is dict:
            # Build the row with policy_input swapped out, then put the (already plain) dict back.
            row = original(_Swap(event))
            row["policy_input"] = pi
        else:
            row = original(event)
        row["ts"] = datetime.fromtimestamp(event.ts, utc).isoformat(timespec="microseconds")
        return row

    class _Swap:
        def __init__(self, ev: Any) -> None:
            self._ev = ev

        def __getattr__(self, k: str) -> Any:
            return None if k == "policy_input" else getattr(self._ev, k)

    writer.event_to_row = fast


def _journal_anon() -> None:
    import mmap

    from gateway.audit import journal

    def replace_with(self: Any, data: bytes, room: int = 0) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        limit = max(self._max, 2 * len(data))
        capacity = -(-(limit + room + (64 << 10)) // mmap.PAGESIZE) * mmap.PAGESIZE
        mm = mmap.mmap(-1, capacity)
        mm.write(bytes(capacity))  # every page touched now, not on the request path
        mm[:len(data)] = data
        if self._fd >= 0:
            self._unmap()
            os.close(self._fd)
        self._fd, self._mm, self._size, self._limit = fd, mm, len(data), limit

    journal.Journal._replace_with = replace_with


def apply(names: set[str], settings_doc: dict[str, Any]) -> dict[str, Any]:
    """Patches that must happen before create_app; returns uvicorn option overrides."""
    if "all" in names:
        names |= set(EXPERIMENTS) - {"all", "null_audit_store", "journal_anon", "no_lifecycle", "shadow",
                                      "shadow_10pct", "no_console_rollup", "no_console_count", *TRACING,
                                      *JOURNAL}
    if "request_id" in names:
        _request_id()
    if "audit_row_fast" in names:
        _audit_row_fast()
    if "journal_anon" in names:
        _journal_anon()
    if "dict_cache" in names:
        settings_doc["cache"] = {"backend": "bench.standins:DictDecisionCache"}
    if "null_audit_store" in names:
        settings_doc["audit"]["backend"] = "bench.standins:NullAuditStore"
    for name in names & set(JOURNAL):
        key, value = JOURNAL[name]
        settings_doc["audit"][key] = value
    for name in names & set(TRACING):  # the driver starts the sink and names it in the environment
        settings_doc["tracing"] = {"enabled": True, "sample_ratio": TRACING[name],
                                   "endpoint": os.environ["BENCH_OTLP_ENDPOINT"]}
    if names & {"no_console_rollup", "no_console_count"}:
        from adapters.audit import console_sqlite

        async def nothing(*args: Any) -> None:
            return None
        if "no_console_rollup" in names:
            console_sqlite.SQLiteConsoleQueries._console_schema = nothing  # type: ignore[method-assign]
        console_sqlite.SQLiteConsoleQueries._count_rows = staticmethod(nothing)  # type: ignore[method-assign]
    for name, sample in (("shadow", 1.0), ("shadow_10pct", 0.1)):
        if name in names:
            policy = settings_doc.setdefault("policy", {})
            policy["shadow"] = {"dir": policy["dir"], "sample": sample}
    if "no_lifecycle" in names:
        settings_doc["lifecycle"] = {"enabled": False}
    if "no_hot_reload" in names:
        settings_doc.setdefault("policy", {})["hot_reload"] = False
        settings_doc.setdefault("identity", {})["hot_reload"] = False
    return {"proxy_headers": "no_proxy_headers" not in names}


def _gc_freeze(app: Any) -> None:
    import gc

    ctx = app.router.lifespan_context

    def frozen(a: Any) -> Any:
        import contextlib

        @contextlib.asynccontextmanager
        async def run() -> Any:
            async with ctx(a):
                gc.collect()
                gc.freeze()
                yield
        return run()
    app.router.lifespan_context = frozen


def serve(config: str, port: int, names: set[str]) -> None:
    import uvicorn
    import yaml

    from gateway.app import create_app
    from gateway.logs import configure_logging
    from gateway.settings import load_settings

    with open(config) as f:
        doc = yaml.safe_load(f)
    opts = apply(names, doc)
    patched = config + ".ab.yaml"
    with open(patched, "w") as f:
        yaml.safe_dump(doc, f)
    settings = load_settings(patched, os.environ)
    configure_logging(settings.logging.level)
    app = create_app(settings)
    if "metrics_bound" in names or "all" in names:
        _metrics_bound(app)
    asgi = app.router if ("router" in names or "all" in names) else app
    if "gc_freeze" in names:
        _gc_freeze(app)
    if "gc_threshold" in names:
        import gc
        gc.set_threshold(7000, 10, 10)
    uvicorn.Server(uvicorn.Config(asgi, host="127.0.0.1", port=port, loop="uvloop", http="httptools",
                                  lifespan="on", access_log=False, log_config=None, **opts)).run()


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]), {n for n in sys.argv[3].split(",") if n and n != "none"})
