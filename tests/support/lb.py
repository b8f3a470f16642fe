"""The round-robin TCP load balancer (bench/lb.py), for tests that put replicas behind one address.

It lives in bench/ because `bench run` (fleet3) uses it too, and bench/ never imports tests/.
Round robin is per connection: send each request on a new connection (`fresh_client`) to
spread requests over the replicas.
"""
from __future__ import annotations

import httpx

from bench.lb import RoundRobinLB

__all__ = ["RoundRobinLB", "fresh_client"]


def fresh_client(base_url: str, **kwargs: object) -> httpx.AsyncClient:
    """An httpx client that opens a new connection per request (no keep-alive), so the
    load balancer hands each request to the next replica."""
    return httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_keepalive_connections=0),
                             **kwargs)  # type: ignore[arg-type]
