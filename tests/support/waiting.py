"""Waiting for what happens off the test's own path (a batched writer, a reload, a server).

One loop for every such wait: `check` is called until it returns something truthy,
which is returned; after `timeout` seconds the test fails naming `what` it awaited.
"""
from __future__ import annotations

import asyncio
import inspect
import time
from typing import Awaitable, Callable, Sized, TypeVar

T = TypeVar("T")
S = TypeVar("S", bound=Sized)

TIMEOUT_S = 30.0  # generous (a shared machine); a wait that succeeds returns at once


def _give_up(what: str, timeout: float, deadline: float) -> None:
    if time.monotonic() > deadline:
        raise AssertionError(f"gave up after {timeout:g}s waiting for {what}")


def eventually(check: Callable[[], T], what: str, *, timeout: float = TIMEOUT_S, interval: float = 0.02) -> T:
    """Poll `check` from a sync test (servers run on another thread)."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        _give_up(what, timeout, deadline)
        time.sleep(interval)
    return value


def at_least(n: int, fetch: Callable[[], S]) -> Callable[[], S | None]:
    """A check for `eventually`: what `fetch` returns, once it holds `n` items or more."""
    def check() -> S | None:
        found = fetch()
        return found if len(found) >= n else None
    return check


async def eventually_async(check: Callable[[], T | Awaitable[T]], what: str, *, timeout: float = TIMEOUT_S,
                           interval: float = 0.01) -> T:
    """Poll `check` (sync or async) without blocking the event loop that must make it true."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        _give_up(what, timeout, deadline)
        await asyncio.sleep(interval)
