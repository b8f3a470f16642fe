"""PolicyEngine on an OPA server (the pod's sidecar), through opa-python-client's AsyncOpaClient.

One decision is one `POST /v1/data/<decision_path>?provenance=true` with `{"input": ...}`
(OPA's Data API). OPA answers `{"result": ...}`, and leaves `result` out when the document
is undefined: an undefined decision is a PolicyError (fail closed), never an allow. A 4xx/5xx
answer carries `{"code", "message"}`, which goes into the PolicyError. A batch of decisions
(the tools of one `tools/list`) is one ad-hoc query, `POST /v1/query`: OPA's Data API has no
batch call, so the query binds `r<i> := data.<decision> with input as input.batch[<i>]` for
each input, with the inputs in the request's `input` (never spliced into the query text).

The revision is OPA's bundle revision (`provenance.bundles.<name>.revision`) when OPA serves
bundles, else the content hash of the policy directory both containers mount, computed
exactly as the regorus engine does (adapters/policy/bundle.py), so both backends name the
same files the same. The directory is also where the tiers, maturities and lifecycle
thresholds come from (data.json), and it is watched like the regorus engine's: a git-sync
commit that lands changes the revision, and a set that fails the checks keeps the old one.
A background poll (`policy.opa.poll_s`) asks `GET /health?bundles` and a provenance probe,
so bundle revisions reach the cache key even while every decision is a cache hit, and
`problem` says why OPA is not usable (for /readyz). OPA being down at boot does not stop
the gateway: it starts on the directory's revision, refuses decisions (503) and recovers
when OPA answers.
"""
from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from typing import Any, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp
import orjson
from opa_client.opa_async import AsyncOpaClient

from adapters.policy import lint
from adapters.policy.bundle import (
    PolicyFiles,
    argument_rules,
    build_engine,
    collect,
    lifecycle_rules,
    tier_obligations,
    vocabulary,
)
from adapters.policy.regorus_engine import (
    CheckVocabulary,
    json_default,
    smoke_input,
    to_decision,
)
from adapters.policy.reloading import OnReload, notify, watch_policies
from gateway.errors import PolicyCompileError, PolicyError
from gateway.lifecycle.model import LifecycleRules
from gateway.settings import PolicySettings
from gateway.types import Decision, Vocabulary

log = logging.getLogger("portcullis.policy")


class BoundedOpaClient(AsyncOpaClient):
    """AsyncOpaClient with a bounded connection pool, and answers read whatever their status.

    What the stock client lacks: its TCPConnector is unbounded (aiohttp's default of 100),
    and query_rule/ad_hoc_query raise on a 4xx/5xx before reading the body, losing OPA's
    `{"code", "message"}`. Its own retries (0.3 s backoff) are turned off: `timeout_s` is
    the whole budget of a decision, and the answer to a failure is to fail closed.
    """

    def __init__(self, url: str, timeout_s: float, max_connections: int) -> None:
        parts = urlsplit(url)
        https = parts.scheme == "https"
        super().__init__(host=parts.hostname or "127.0.0.1", port=parts.port or (443 if https else 80),
                         ssl=https, retries=0, timeout=timeout_s)
        self._max_connections = max_connections

    async def _init_session(self) -> None:
        self._connector = aiohttp.TCPConnector(limit=self._max_connections,
                                               ssl=ssl.create_default_context() if self.ssl else False)
        # total: connecting, waiting for a pooled connection and reading, all within timeout_s.
        self._session = aiohttp.ClientSession(headers=self.headers, connector=self._connector,
                                              timeout=aiohttp.ClientTimeout(total=self.timeout))

    async def post_json(self, path: str, body: bytes) -> tuple[int, Any]:
        """POST a JSON body to `/v1/<path>`; returns the status and the parsed answer."""
        url = f"{self.root_url}/{path}"
        async with self._request("POST", url, data=body, headers={"content-type": "application/json"}) as r:
            raw = await r.read()
            return r.status, orjson.loads(raw) if raw else None


class OPAEngine:
    """PolicyEngine whose decisions come from OPA; the stage awaits `aevaluate_many`."""

    def __init__(self, settings: PolicySettings, policy_dir: Path,
                 on_reload: OnReload | None = None, check_vocabulary: CheckVocabulary | None = None) -> None:
        self._settings = settings
        self._opa = settings.opa
        self._dir = Path(policy_dir)
        self._on_reload = on_reload
        self._check_vocabulary = check_vocabulary
        rule = self._opa.decision_path.split("/")
        url = urlsplit(self._opa.url)
        self._where = f"{url.hostname}:{url.port or (443 if url.scheme == 'https' else 80)}"  # never credentials
        self._data_path = "data/" + self._opa.decision_path + "?provenance=true"
        self._rule_ref = "data." + ".".join(rule)
        self._client: BoundedOpaClient | None = None
        self._dir_revision = ""
        self._bundle_revision: str | None = None
        self._vocab = Vocabulary()
        self._lifecycle = LifecycleRules()
        self._obligations: dict[int, dict[str, Any]] = {}  # tier -> obligations, from data.json
        self._argument_rules: frozenset[tuple[str, str]] = frozenset()  # from data.json, per loaded set
        self.problem: str | None = "OPA not contacted yet"  # for /readyz; None when usable
        self._lock = asyncio.Lock()
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- PolicyEngine ------------------------------------------------------------

    @property
    def revision(self) -> str:
        return self._bundle_revision or self._dir_revision

    @property
    def vocabulary(self) -> Vocabulary:
        return self._vocab

    @property
    def lifecycle(self) -> LifecycleRules:
        return self._lifecycle

    @property
    def argument_rules(self) -> frozenset[tuple[str, str]]:
        """(server, tool) pairs whose tool.call input carries the call's arguments."""
        return self._argument_rules

    def tier_obligations(self, tier: int) -> dict[str, Any]:
        """The tier's obligations in the mounted data (the emergency bypass's limits)."""
        return self._obligations.get(tier, {})

    async def start(self) -> None:
        """Load the directory (PolicyCompileError if unusable) and start polling OPA; OPA may be down."""
        self._stop = asyncio.Event()
        if self._settings.hot_reload:
            self._tasks.append(asyncio.create_task(self._watch(self._stop), name="policy-watcher"))
            await asyncio.sleep(0)  # let awatch register before the first load (see regorus_engine)
        try:
            async with self._lock:
                files = await self._load()
                self._dir_revision, self._vocab = files.revision, vocabulary(files.data)
                self._lifecycle = lifecycle_rules(files.data)
                self._obligations = tier_obligations(files.data)
                self._argument_rules = argument_rules(files.data)
            self._client = BoundedOpaClient(self._opa.url, self._opa.timeout_s, self._opa.max_connections)
            await self._client._init_session()
        except BaseException:
            await self.aclose()
            raise
        await self.poll_once()
        self._tasks.append(asyncio.create_task(self._poll(self._stop), name="opa-poll"))
        log.info("policy from OPA at %s, revision %s%s", self._where, self.revision,
                 "" if self.problem is None else f" (not usable yet: {self.problem})")

    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        raise PolicyError("the opa backend decides over the network; await aevaluate_many()")

    def evaluate_many(self, inputs: Sequence[Mapping[str, Any]]) -> list[Decision]:
        raise PolicyError("the opa backend decides over the network; await aevaluate_many()")

    async def aevaluate_many(self, inputs: Sequence[Mapping[str, Any]]) -> list[Decision]:
        """One Data API call for one input, one ad-hoc query for several; PolicyError on any failure."""
        if self._client is None:
            raise PolicyError("policy engine is not started")
        if len(inputs) == 1:
            return [await self._decide(inputs[0])]
        return await self._decide_batch(inputs)

    async def reload(self) -> str:
        """Read the directory again; a set that fails the checks keeps the active revision."""
        async with self._lock:
            try:
                files = await self._load()
                vocab, rules = vocabulary(files.data), lifecycle_rules(files.data)
            except PolicyCompileError as e:
                log.error("policy reload rejected, keeping revision %s: %s", self.revision, e)
                self._notify(None, e.with_traceback(None))
                return self.revision
            if files.revision == self._dir_revision:
                return self.revision
            self._dir_revision, self._vocab, self._lifecycle = files.revision, vocab, rules
            self._obligations = tier_obligations(files.data)
            self._argument_rules = argument_rules(files.data)
        log.info("policy directory changed, revision %s", self.revision)
        self._notify(self.revision, None)
        return self.revision

    async def aclose(self) -> None:
        if self._stop is not None:
            self._stop.set()
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client, self._client = self._client, None
        if client is not None:
            await client.close_connection()

    # ---- OPA calls -------------------------------------------------------------------

    async def _call(self, path: str, payload: Mapping[str, Any]) -> Any:
        """POST to OPA; the parsed answer of a 200, else PolicyError (and `problem` set)."""
        assert self._client is not None
        try:
            body = orjson.dumps(payload, default=json_default)
        except TypeError as e:
            raise PolicyError(f"policy input is not JSON: {e}") from e
        try:
            status, answer = await self._client.post_json(path, body)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, orjson.JSONDecodeError) as e:
            # Never the exception's repr alone: aiohttp's may be empty for a timeout.
            what = "timed out" if isinstance(e, asyncio.TimeoutError) else f"failed: {type(e).__name__}: {e}"
            self.problem = f"OPA at {self._where} {what}"
            raise PolicyError(f"policy evaluation {self.problem}") from None
        # OPA answers evaluation errors (a conflict for one input) with 400/500: it is up.
        # 502-504 come from whatever stands in front of an OPA that is not.
        self.problem = None
        if status != 200:
            err = answer if isinstance(answer, dict) else {}
            msg = f"OPA answered {status}: {err.get('code', 'error')}: {err.get('message', '')}".rstrip(": ")
            if status > 500:
                self.problem = msg
            raise PolicyError(f"policy evaluation failed: {msg}")
        if not isinstance(answer, dict):
            raise PolicyError("policy evaluation failed: OPA's answer is not a JSON object")
        return answer

    async def _decide(self, policy_input: Mapping[str, Any]) -> Decision:
        answer = await self._call(self._data_path, {"input": policy_input})
        self._see_provenance(answer.get("provenance"))
        if "result" not in answer:  # OPA leaves `result` out when the document is undefined
            raise PolicyError(f"{self._rule_ref} is undefined")
        return to_decision(answer["result"], self.revision, self._settings.default_cache_ttl_s)

    async def _decide_batch(self, inputs: Sequence[Mapping[str, Any]]) -> list[Decision]:
        revision = self.revision  # the query API reports no provenance: the batch takes the current one
        query = "; ".join(f"r{i} := {self._rule_ref} with input as input.batch[{i}]" for i in range(len(inputs)))
        answer = await self._call("query", {"query": query, "input": {"batch": list(inputs)}})
        rows = answer.get("result")
        if not rows or not isinstance(rows, list) or not isinstance(rows[0], dict):
            raise PolicyError(f"{self._rule_ref} is undefined for at least one input of the batch")
        row = rows[0]
        return [to_decision(row.get(f"r{i}"), revision, self._settings.default_cache_ttl_s)
                for i in range(len(inputs))]

    def _see_provenance(self, provenance: Any) -> None:
        """Take the bundle revision OPA reports; a change is a reload (cache keys move on)."""
        bundles = provenance.get("bundles") if isinstance(provenance, dict) else None
        revs = sorted((str(n), str(b.get("revision") or "")) for n, b in bundles.items()
                      if isinstance(b, dict)) if isinstance(bundles, dict) else []
        revs = [(n, r) for n, r in revs if r]
        new = None if not revs else revs[0][1] if len(revs) == 1 else ",".join(f"{n}={r}" for n, r in revs)
        if new != self._bundle_revision:
            self._bundle_revision = new
            log.info("OPA bundle revision is now %s; policy revision %s", new, self.revision)
            self._notify(self.revision, None)

    async def poll_once(self) -> None:
        """Ask OPA's health (bundles activated) and probe a decision for its provenance."""
        assert self._client is not None
        if not await self._client.check_health(query={"bundles": "true"}):
            self.problem = f"OPA at {self._where} is not healthy (GET /health?bundles)"
            return
        try:
            answer = await self._call(self._data_path, {"input": smoke_input(self._vocab)})
        except PolicyError as e:
            self.problem = e.message
            return
        self._see_provenance(answer.get("provenance"))
        if "result" not in answer:
            self.problem = f"{self._rule_ref} is undefined on OPA at {self._where}"

    async def _poll(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self._opa.poll_s)
                return
            except asyncio.TimeoutError:
                pass
            try:
                await self.poll_once()
            except Exception:  # a poll that fails must not end polling
                log.exception("polling OPA failed")

    # ---- the policy directory -------------------------------------------------------

    async def _load(self) -> PolicyFiles:
        files = await asyncio.to_thread(_read, self._dir)
        vocab = vocabulary(files.data)
        misfits = list(self._check_vocabulary(vocab)) if self._check_vocabulary is not None else []
        if misfits:
            raise PolicyCompileError("the policy data's tiers and maturities leave out: " + "; ".join(misfits))
        return files

    def _notify(self, revision: str | None, exc: Exception | None) -> None:
        notify(self._on_reload, revision, exc)

    async def _watch(self, stop: asyncio.Event) -> None:
        await watch_policies(self._dir, self.reload, stop)


def _read(policy_dir: Path) -> PolicyFiles:
    """The same files and checks as the regorus engine: a set OPA would refuse keeps the old revision."""
    files = collect(policy_dir)
    lint.raise_for(lint.check(files))
    build_engine(files)  # Rego syntax; made and dropped on this worker thread, never used
    return files
