"""PolicyEngine on regorus, the in-process Rego engine.

regorus objects are bound to the thread that made them, so every engine is
built and evaluated on the event-loop thread; only file reading runs in a
worker thread. A reload builds a complete new engine, smoke-tests it, and swaps
it in with one attribute assignment, so a request never sees half a policy set.
A candidate must also pass the static checks of lint.py (what OPA would refuse,
data that breaks its schema) and the `check_vocabulary` hook (the app's agents
must fit the set's tiers and maturities); a set that fails any is rejected.

Decisions come from regorus' compiled program (the RVM) when
`policy.evaluator` is `compiled` (the default) and the set passes the
agreement check in compiled.py; otherwise, and for any result the RVM marks
undefined, from the interpreter.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import orjson
import regorus

from adapters.policy import compiled, lint
from adapters.policy.bundle import (
    PolicyFiles,
    argument_rules,
    build_engine,
    collect,
    error_text,
    lifecycle_rules,
    tier_obligations,
    vocabulary,
)
from adapters.policy.reloading import OnReload, notify, watch_policies
from gateway.errors import PolicyCompileError, PolicyError
from gateway.lifecycle.model import SEVERITIES, LifecycleRules
from gateway.settings import PolicySettings
from gateway.types import Decision, Vocabulary

log = logging.getLogger("portcullis.policy")

ENTRY_POINT = "data.portcullis.decision"

# Reasons a set's vocabulary may not go live (e.g. an agent whose maturity it drops).
CheckVocabulary = Callable[[Vocabulary], Sequence[str]]


def smoke_input(vocab: Vocabulary) -> dict[str, Any]:
    """Evaluated against every candidate set before it goes live: a set whose
    decision errors or is not a decision object never replaces a working one."""
    return {
        "agent": {"id": "smoke-test", "tier": min(vocab.tiers or (0,)),
                  "maturity": (vocab.maturities or ("smoke",))[0], "workspace": "smoke",
                  "labels": {}, "auth": "api_key"},
        "action": "llm.models",
        "resource": {"type": "model", "name": "smoke-model", "upstream": "smoke"},
        "request": {"api": "openai", "stream": False},
    }


@dataclass(frozen=True, slots=True)
class _Active:
    engine: regorus.Engine
    revision: str
    vocabulary: Vocabulary
    files: Any = None  # the PolicyFiles it was built from, to compile its program
    vm: Any = None  # regorus.Rvm once the set's program agrees with the interpreter
    lifecycle: LifecycleRules = field(default_factory=LifecycleRules)  # the set's lifecycle thresholds
    argument_rules: frozenset[tuple[str, str]] = frozenset()  # (server, tool) whose calls carry arguments


def _read(policy_dir: Path) -> PolicyFiles:
    """Collect and statically check the set (plain Python, so it runs off the event loop)."""
    files = collect(policy_dir)
    lint.raise_for(lint.check(files))
    return files


def json_default(obj: Any) -> Any:
    # Inputs are built from frozen types, so mappings may not be plain dicts.
    if isinstance(obj, Mapping):
        return dict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def to_decision(result: Any, revision: str, default_ttl_s: int) -> Decision:
    """Validate what the policy returned; anything that is not a decision is a PolicyError."""
    if result is None:
        raise PolicyError(f"{ENTRY_POINT} is undefined")
    if not isinstance(result, dict):
        raise PolicyError(f"{ENTRY_POINT} must be an object, got {type(result).__name__}")
    allow = result.get("allow")
    if not isinstance(allow, bool):
        raise PolicyError(f"{ENTRY_POINT}.allow must be a boolean, got {allow!r}")
    reasons = result.get("reasons", [])
    if isinstance(reasons, (set, frozenset)):  # a partial set comes back as a Python set
        reasons = sorted(reasons, key=str)
    if not isinstance(reasons, (list, tuple)) or not all(isinstance(r, str) for r in reasons):
        raise PolicyError(f"{ENTRY_POINT}.reasons must be a list of strings")
    obligations = result.get("obligations", {})
    if not isinstance(obligations, dict):
        raise PolicyError(f"{ENTRY_POINT}.obligations must be an object")
    ttl = result.get("cache_ttl_s", default_ttl_s)
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0:
        raise PolicyError(f"{ENTRY_POINT}.cache_ttl_s must be a non-negative integer, got {ttl!r}")
    # Lifecycle fields (contract 6) are rare: one lookup each when absent, no other work.
    violation = result.get("violation")
    if violation is not None:
        violation = _violation(violation)
    approval = result.get("approval")
    if approval is not None:
        approval = _approval(approval, allow)
    return Decision(allow=allow, reasons=tuple(reasons), obligations=obligations,
                    cache_ttl_s=ttl, revision=revision, violation=violation, approval=approval)


def _violation(v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise PolicyError(f"{ENTRY_POINT}.violation must be an object, got {type(v).__name__}")
    kind, severity = v.get("kind"), v.get("severity")
    if not isinstance(kind, str) or not kind:
        raise PolicyError(f"{ENTRY_POINT}.violation.kind must be a non-empty string, got {kind!r}")
    if severity not in SEVERITIES:
        raise PolicyError(f"{ENTRY_POINT}.violation.severity must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    return v


def _approval(a: Any, allow: bool) -> dict[str, Any] | None:
    """{"required": true, "reason"}; a decision saying none is required carries None."""
    if not isinstance(a, dict):
        raise PolicyError(f"{ENTRY_POINT}.approval must be an object, got {type(a).__name__}")
    required, reason = a.get("required"), a.get("reason", "")
    if not isinstance(required, bool):
        raise PolicyError(f"{ENTRY_POINT}.approval.required must be a boolean, got {required!r}")
    if not isinstance(reason, str):
        raise PolicyError(f"{ENTRY_POINT}.approval.reason must be a string, got {reason!r}")
    if not required:
        return None
    if allow:  # an approval could only lift a refusal: an allow asking for one is a policy bug
        raise PolicyError(f"{ENTRY_POINT}.approval.required needs allow false")
    return a if "reason" in a else {**a, "reason": ""}


class RegorusEngine:
    def __init__(self, settings: PolicySettings, policy_dir: Path,
                 on_reload: OnReload | None = None, check_vocabulary: CheckVocabulary | None = None) -> None:
        self._settings = settings
        self._dir = Path(policy_dir)
        self._on_reload = on_reload
        self._check_vocabulary = check_vocabulary
        self._active: _Active | None = None
        self._lock = asyncio.Lock()
        self._stop: asyncio.Event | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._upgrading: asyncio.Task[None] | None = None

    @property
    def revision(self) -> str:
        return self._active.revision if self._active else ""

    @property
    def vocabulary(self) -> Vocabulary:
        return self._active.vocabulary if self._active else Vocabulary()

    @property
    def lifecycle(self) -> LifecycleRules:
        return self._active.lifecycle if self._active else LifecycleRules()

    @property
    def argument_rules(self) -> frozenset[tuple[str, str]]:
        """(server, tool) pairs whose tool.call input carries the call's arguments."""
        return self._active.argument_rules if self._active else frozenset()

    def tier_obligations(self, tier: int) -> dict[str, Any]:
        """The tier's obligations in the loaded data (the emergency bypass's limits; rare)."""
        return tier_obligations(self._active.files.data).get(tier, {}) if self._active else {}

    @property
    def evaluator(self) -> str:
        return "compiled" if self._active is not None and self._active.vm is not None else "interpreter"

    async def start(self) -> None:
        """Start watching (if hot_reload), then load the set; PolicyCompileError if it is unusable."""
        if self._settings.hot_reload and self._watcher is None:
            self._stop = asyncio.Event()
            self._watcher = asyncio.create_task(self._watch(self._stop), name="policy-watcher")
            # One loop turn lets awatch register its watches before the first load,
            # so an edit made while loading is still seen and reloaded.
            await asyncio.sleep(0)
        try:
            async with self._lock:  # a reload from the watcher waits for this load
                self._active = await self._load()
                self._upgrade(self._active)
        except BaseException:
            await self.aclose()
            raise
        log.info("policy loaded from %s, revision %s", self._dir, self._active.revision)

    async def reload(self) -> str:
        """Load the directory again; on any failure the active set stays. Returns the active revision."""
        async with self._lock:
            try:
                candidate = await self._load()
            except PolicyCompileError as e:
                log.error("policy reload rejected, keeping revision %s: %s", self.revision, e)
                # The message says what is wrong with the policy; the traceback would
                # only tie this engine into a cycle with whoever keeps the error.
                self._notify(None, e.with_traceback(None))
                return self.revision
            if self._active is not None and candidate.revision == self._active.revision:
                return self.revision
            self._active = candidate  # the swap: one assignment
            self._upgrade(candidate)
            log.info("policy reloaded, revision %s", candidate.revision)
            self._notify(candidate.revision, None)
            return candidate.revision

    def evaluate(self, policy_input: Mapping[str, Any]) -> Decision:
        active = self._active
        if active is None:
            raise PolicyError("policy engine is not started")
        return self._evaluate(active, policy_input)

    def evaluate_many(self, inputs: Sequence[Mapping[str, Any]]) -> list[Decision]:
        active = self._active  # one revision for the whole batch
        if active is None:
            raise PolicyError("policy engine is not started")
        return [self._evaluate(active, i) for i in inputs]

    async def aclose(self) -> None:
        upgrading, self._upgrading = self._upgrading, None
        if upgrading is not None:
            upgrading.cancel()
            await asyncio.gather(upgrading, return_exceptions=True)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            if self._stop is not None:
                self._stop.set()
            watcher.cancel()
            try:
                await watcher
            except asyncio.CancelledError:
                pass
        # Drop the engine here, on the loop thread that made it: regorus engines
        # may not be freed from another thread (e.g. by a later GC elsewhere).
        self._active = None

    # ---- internals -------------------------------------------------------------

    def _evaluate(self, active: _Active, policy_input: Mapping[str, Any]) -> Decision:
        try:
            payload = orjson.dumps(policy_input, default=json_default).decode()
        except TypeError as e:
            raise PolicyError(f"policy input is not JSON: {e}") from e
        try:
            result = None
            if active.vm is not None:
                result = compiled.run_vm(active.vm, payload, ENTRY_POINT)
                if isinstance(result, dict) and compiled.UNDEFINED in (result.get("reasons") or ()):
                    log.warning("compiled policy gave an undefined reason; deciding with the interpreter")
                    result = None
            if result is None:
                result = self._interpret(active.engine, payload)
        except Exception as e:  # regorus raises RuntimeError/ValueError; fail closed
            raise PolicyError(f"policy evaluation failed: {error_text(e)}") from e
        return to_decision(result, active.revision, self._settings.default_cache_ttl_s)

    @staticmethod
    def _interpret(engine: regorus.Engine, payload: str) -> Any:
        engine.set_input_json(payload)
        return engine.eval_rule(ENTRY_POINT)

    async def _load(self) -> _Active:
        files = await asyncio.to_thread(_read, self._dir)
        vocab = vocabulary(files.data)
        misfits = list(self._check_vocabulary(vocab)) if self._check_vocabulary is not None else []
        if misfits:
            raise PolicyCompileError("the policy data's tiers and maturities leave out: " + "; ".join(misfits))
        rules = lifecycle_rules(files.data)  # bad lifecycle data rejects the set, like a bad vocabulary
        engine = build_engine(files)  # here, on the loop thread that will use it
        active = _Active(engine, files.revision, vocab, files, lifecycle=rules,
                         argument_rules=argument_rules(files.data))
        try:
            self._evaluate(active, smoke_input(vocab))
        except PolicyError as e:
            failure = e.message
        else:
            return active
        # Dropped here, outside the except block, so no traceback keeps the rejected
        # Engine alive for a GC pass on another thread (regorus engines are thread-bound).
        del active, engine
        raise PolicyCompileError(f"smoke evaluation failed: {failure}")

    def _upgrade(self, active: _Active) -> None:
        """Check the set's compiled program in the background; swap it in if it agrees.

        A set goes live on the interpreter at once, so neither startup nor a reload
        under traffic waits for the check.
        """
        if self._settings.evaluator != "compiled":
            return
        if self._upgrading is not None:
            self._upgrading.cancel()  # checking a set that is no longer live is wasted work
        self._upgrading = asyncio.create_task(self._with_program(active), name="policy-compile")

    async def compiled_ready(self) -> str:
        """Wait for the running program check (if any); returns the evaluator in use."""
        if self._upgrading is not None:
            await asyncio.gather(self._upgrading, return_exceptions=True)
        return self.evaluator

    async def _with_program(self, active: _Active) -> None:
        files = active.files
        try:
            vm = compiled.build_vm(files, ENTRY_POINT)
        except PolicyCompileError as e:
            log.warning("revision %s stays on the interpreter: %s", active.revision, e)
            return
        found = await compiled.disagreements(lambda p: self._interpret(active.engine, p),
                                             lambda p: compiled.run_vm(vm, p, ENTRY_POINT),
                                             compiled.corpus(files, active.vocabulary))
        if found:
            log.warning("revision %s stays on the interpreter: the compiled program decided "
                        "differently, e.g. for input %s", active.revision, found[0])
        elif self._active is active:  # still the live set: swap in its program, one assignment
            self._active = replace(active, vm=vm)
            log.info("revision %s now runs compiled", active.revision)

    def _notify(self, revision: str | None, exc: Exception | None) -> None:
        notify(self._on_reload, revision, exc)

    async def _watch(self, stop: asyncio.Event) -> None:
        await watch_policies(self._dir, self.reload, stop)
