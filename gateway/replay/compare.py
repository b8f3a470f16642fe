"""What a candidate policy set would change: pure functions over two decisions per input.

Each distinct input gets at most one change kind, the most consequential first:
a flipped decision (allow->deny, deny->allow), then changed obligations (the limits the
gateway enforces), then a changed violation or approval (contract 6: what the request
means for the agent's error budget), then changed reasons only. Counts are kept twice:
weighted by the requests that sent the input, and per distinct input.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.types import Decision

ALLOW_TO_DENY, DENY_TO_ALLOW, OBLIGATIONS, LIFECYCLE, REASONS = (
    "allow_to_deny", "deny_to_allow", "obligations", "lifecycle", "reasons")
KINDS = (ALLOW_TO_DENY, DENY_TO_ALLOW, OBLIGATIONS, LIFECYCLE, REASONS)
LABELS = {ALLOW_TO_DENY: "allow -> deny", DENY_TO_ALLOW: "deny -> allow", OBLIGATIONS: "obligations changed",
          LIFECYCLE: "violation/approval changed", REASONS: "reasons only"}
# `--fail-on`: which kinds fail the run. "any" is every decision or obligation change; a
# reworded reason alone never fails a build.
FAIL_ON = {"allow-to-deny": (ALLOW_TO_DENY,), "deny-to-allow": (DENY_TO_ALLOW,),
           "any": (ALLOW_TO_DENY, DENY_TO_ALLOW, OBLIGATIONS, LIFECYCLE)}
DIMENSIONS = ("agent", "action", "resource")


def failed_decision(message: str, revision: str = "") -> Decision:
    """What the gateway does when a set cannot decide an input: fail closed, a deny."""
    return Decision(allow=False, reasons=(f"policy error: {message}",), obligations={}, revision=revision)


def change_kind(base: Decision, cand: Decision) -> str | None:
    if base.allow != cand.allow:
        return ALLOW_TO_DENY if base.allow else DENY_TO_ALLOW
    if dict(base.obligations) != dict(cand.obligations):
        return OBLIGATIONS
    if _plain(base.violation) != _plain(cand.violation) or _plain(base.approval) != _plain(cand.approval):
        return LIFECYCLE
    if tuple(base.reasons) != tuple(cand.reasons):
        return REASONS
    return None


def _plain(v: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if v is None else dict(v)


def dimensions(policy_input: Mapping[str, Any]) -> tuple[str, str, str]:
    """(agent, action, resource) of an input, for the breakdown; "?" for what is missing."""
    agent = policy_input.get("agent")
    res = policy_input.get("resource")
    agent_id = agent.get("id") if isinstance(agent, Mapping) else None
    resource = "?"
    if isinstance(res, Mapping):
        server, name = res.get("server"), res.get("name")
        where = f"{server}/{name}" if server and name else (name or server or "?")  # tool.list: the server
        resource = f"{res.get('type') or '?'}:{where}"
    return str(agent_id or "?"), str(policy_input.get("action") or "?"), resource


def from_doc(doc: Mapping[str, Any], revision: str = "") -> Decision:
    """decision_doc() read back (a shadow_decision column): what the report shows of a decision."""
    return Decision(allow=bool(doc.get("allow")), reasons=tuple(doc.get("reasons") or ()),
                    obligations=dict(doc.get("obligations") or {}), revision=revision,
                    violation=doc.get("violation"), approval=doc.get("approval"))


def decision_doc(d: Decision) -> dict[str, Any]:
    doc: dict[str, Any] = {"allow": d.allow, "reasons": list(d.reasons), "obligations": dict(d.obligations)}
    if d.violation is not None:
        doc["violation"] = dict(d.violation)
    if d.approval is not None:
        doc["approval"] = dict(d.approval)
    return doc


@dataclass(slots=True)
class _Count:
    requests: int = 0
    inputs: int = 0

    def add(self, requests: int) -> None:
        self.requests += requests
        self.inputs += 1

    def doc(self) -> dict[str, int]:
        return {"requests": self.requests, "inputs": self.inputs}


@dataclass(slots=True)
class _Example:
    requests: int
    digest: str
    policy_input: Mapping[str, Any]
    base: Decision
    cand: Decision


@dataclass(slots=True)
class Comparison:
    """Accumulates input by input; `report()` gives the JSON-able result."""
    limit: int = 5
    changes: dict[str, _Count] = field(default_factory=lambda: {k: _Count() for k in KINDS})
    unchanged: _Count = field(default_factory=_Count)
    errors: dict[str, int] = field(default_factory=lambda: {"baseline": 0, "candidate": 0})
    # dimension -> key -> kind -> count
    breakdown: dict[str, dict[str, dict[str, _Count]]] = field(
        default_factory=lambda: {d: {} for d in DIMENSIONS})
    _examples: dict[str, list[_Example]] = field(default_factory=lambda: {k: [] for k in KINDS})

    def add(self, digest: str, policy_input: Mapping[str, Any], requests: int, base: Decision, cand: Decision,
            base_error: bool = False, cand_error: bool = False, *, kind: str | None = "") -> str | None:
        """Count one distinct input; `kind` as already judged (shadow mode records it), else compared."""
        self.errors["baseline"] += base_error
        self.errors["candidate"] += cand_error
        if kind == "":
            kind = change_kind(base, cand)
        if kind is None:
            self.unchanged.add(requests)
            return None
        self.changes[kind].add(requests)
        for dim, key in zip(DIMENSIONS, dimensions(policy_input)):
            self.breakdown[dim].setdefault(key, {}).setdefault(kind, _Count()).add(requests)
        examples = self._examples[kind]
        if self.limit > 0:
            examples.append(_Example(requests, digest, policy_input, base, cand))
            if len(examples) > 4 * self.limit:  # keep the busiest few, bounded memory
                examples.sort(key=_busiest)
                del examples[self.limit:]
        return kind

    def failed(self, fail_on: str | None) -> bool:
        return fail_on is not None and any(self.changes[k].inputs for k in FAIL_ON[fail_on])

    def report(self) -> dict[str, Any]:
        return {
            "changes": {k: c.doc() for k, c in self.changes.items()},
            "unchanged": self.unchanged.doc(),
            "errors": dict(self.errors),
            "breakdown": {dim: _breakdown(keys) for dim, keys in self.breakdown.items()},
            "examples": {k: [_example_doc(e) for e in sorted(ex, key=_busiest)[:self.limit]]
                         for k, ex in self._examples.items()},
        }


def _busiest(e: _Example) -> tuple[int, str]:
    return -e.requests, e.digest


def _example_doc(e: _Example) -> dict[str, Any]:
    return {"input_digest": e.digest, "requests": e.requests, "input": e.policy_input,
            "baseline": decision_doc(e.base), "candidate": decision_doc(e.cand)}


def _breakdown(keys: Mapping[str, Mapping[str, _Count]]) -> list[dict[str, Any]]:
    """Rows sorted by changed requests, most first: {"key", "requests", "inputs", <kind>: {...}}."""
    rows = []
    for key, kinds in keys.items():
        row: dict[str, Any] = {"key": key, "requests": sum(c.requests for c in kinds.values()),
                               "inputs": sum(c.inputs for c in kinds.values())}
        row.update({k: kinds[k].doc() for k in KINDS if k in kinds})
        rows.append(row)
    rows.sort(key=lambda r: (-r["requests"], r["key"]))
    return rows


def compare_all(entries: Iterable[tuple[str, Mapping[str, Any], int]], base: Sequence[Decision],
                cand: Sequence[Decision], limit: int = 5) -> Comparison:
    """Convenience for callers holding every decision at once: (digest, input, requests) each."""
    c = Comparison(limit=limit)
    for (digest, doc, requests), b, k in zip(entries, base, cand, strict=True):
        c.add(digest, doc, requests, b, k)
    return c
