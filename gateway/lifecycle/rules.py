"""The lifecycle thresholds of a policy set: `data.portcullis.config.lifecycle` -> LifecycleRules.

What counts as an error and when an agent is revoked or proposed for promotion is policy
data (DESIGN contract 6), so the engines parse it once per loaded set, next to the
vocabulary, and a set whose lifecycle data is malformed is rejected like any other bad
data: the error names the key, and a reload keeps the previous set. A missing key takes
LifecycleRules' default. `approval` is read by the Rego policy, not here; its shape is
still checked, so a typo cannot silently switch approvals off.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gateway.errors import PolicyCompileError
from gateway.lifecycle.model import Budget, LifecycleRules

ROOT = "data.portcullis.config.lifecycle"
_TIER_KEY = re.compile(r"0|[1-9][0-9]*")
_KEYS = ("error_budgets", "consecutive_compliant_for_promotion", "auto_promote_max_tier",
         "rate_limited_errors_after", "budget_warn_fraction", "approval")
_BUDGET_COUNTS = ("max_total_errors", "max_same_error_repeats", "max_procedure_violations")


def _fail(path: str, what: str, value: Any) -> PolicyCompileError:
    return PolicyCompileError(f"{ROOT}.{path} must be {what}, got {value!r}")


def _int(value: Any, path: str, minimum: int) -> int:
    # JSON has one number type: 8.0 is 8, but true is not 1.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(path, f"an integer >= {minimum}", value)
    return value


def _number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise _fail(path, "a number > 0", value)
    return float(value)


def _object(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, "an object", value)
    return value


def _unknown(node: Mapping[str, Any], known: tuple[str, ...], path: str) -> None:
    extra = sorted(set(node) - set(known))
    if extra:
        raise PolicyCompileError(f"{ROOT}{path}: unknown key {extra[0]!r} (known: {', '.join(known)})")


def _per_tier(value: Any, path: str) -> Mapping[str, Any]:
    """An object keyed by tier numbers ("0", "1", ...). A tier the set does not declare is
    allowed (never used): a team renaming its tiers need not edit every threshold at once."""
    node = _object(value, path)
    for key in node:
        if not isinstance(key, str) or not _TIER_KEY.fullmatch(key):
            raise PolicyCompileError(f"{ROOT}.{path}: {key!r} is not a tier number")
    return node


def _budget(value: Any, path: str) -> Budget:
    node = _object(value, path)
    _unknown(node, (*_BUDGET_COUNTS, "window_s"), "." + path)
    d = Budget()
    counts = {k: _int(node[k], f"{path}.{k}", 1) if k in node else getattr(d, k) for k in _BUDGET_COUNTS}
    window = _number(node["window_s"], f"{path}.window_s") if "window_s" in node else d.window_s
    return Budget(**counts, window_s=window)


def _approval(value: Any) -> None:
    node = _object(value, "approval")
    _unknown(node, ("destructive_min_tier", "maturities"), ".approval")
    if "destructive_min_tier" in node:
        _int(node["destructive_min_tier"], "approval.destructive_min_tier", 0)
    maturities = node.get("maturities", [])
    if not isinstance(maturities, list) or not all(isinstance(m, str) and m for m in maturities):
        raise _fail("approval.maturities", "a list of maturity names", maturities)


def parse_rules(cfg: Mapping[str, Any] | None) -> LifecycleRules:
    """`cfg` is data.portcullis.config (None or no `lifecycle` key: the defaults).

    PolicyCompileError naming the key when the data is malformed.
    """
    if not isinstance(cfg, Mapping) or cfg.get("lifecycle") is None:
        return LifecycleRules()
    node = cfg["lifecycle"]
    if not isinstance(node, Mapping):
        raise PolicyCompileError(f"{ROOT} must be an object, got {node!r}")
    _unknown(node, _KEYS, "")
    d = LifecycleRules()

    budgets = {int(k): _budget(v, f"error_budgets.{k}")
               for k, v in _per_tier(node.get("error_budgets", {}), "error_budgets").items()}
    promotion = {int(k): _int(v, f"consecutive_compliant_for_promotion.{k}", 1)
                 for k, v in _per_tier(node.get("consecutive_compliant_for_promotion", {}),
                                       "consecutive_compliant_for_promotion").items()}
    auto = node.get("auto_promote_max_tier")
    if auto is not None:
        auto = _int(auto, "auto_promote_max_tier", 0)
    after = (_int(node["rate_limited_errors_after"], "rate_limited_errors_after", 0)
             if "rate_limited_errors_after" in node else d.rate_limited_errors_after)
    fraction = d.budget_warn_fraction
    if "budget_warn_fraction" in node:
        fraction = _number(node["budget_warn_fraction"], "budget_warn_fraction")
        if fraction > 1:
            raise _fail("budget_warn_fraction", "a number in (0, 1]", node["budget_warn_fraction"])
    if "approval" in node:
        _approval(node["approval"])
    return LifecycleRules(budgets=budgets, consecutive_compliant_for_promotion=promotion,
                          auto_promote_max_tier=auto, rate_limited_errors_after=after,
                          budget_warn_fraction=fraction)
