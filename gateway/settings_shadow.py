"""Settings of shadow mode (`policy.shadow`): a second policy set that decides sampled requests
off the request path, never changing their outcome (gateway/shadow/)."""
from __future__ import annotations

from pydantic import Field

from gateway.configbase import Model


class ShadowAlertSettings(Model):
    """When disagreements become a governance event (`policy.shadow_disagreements`, MEDIUM).

    Evaluated per window: an event when at least `min_disagreements` sampled requests were decided
    differently (allow/deny, obligations, violation/approval; reworded reasons do not count) and they
    are at least `rate` of the window's shadow decisions. At most one event a window per replica.
    """
    rate: float = Field(0.05, ge=0, le=1)
    min_disagreements: int = Field(20, ge=1)
    window_s: float = Field(300.0, gt=0)


class ShadowSettings(Model):
    dir: str  # the candidate set, hot-reloaded like policy.dir (relative to the config file)
    sample: float = Field(1.0, ge=0, le=1)  # share of decided requests the shadow set also decides
    # Requests waiting for their shadow decision (their audit rows wait with them). A full queue
    # drops the shadow decision (counted in portcullis_shadow_dropped_total), never the row.
    queue_size: int = Field(10_000, ge=1)
    batch: int = Field(64, ge=1, le=4096)  # decisions per turn of the worker: bounds one loop stall
    alert: ShadowAlertSettings = ShadowAlertSettings()
