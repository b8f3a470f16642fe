"""BodyReader: a stalled body is a RequestTimeout; any other cancellation stays one."""
from __future__ import annotations

import asyncio

import pytest

from gateway.bodyread import BodyReader
from gateway.errors import PayloadTooLarge, RequestTimeout
from gateway.http import ClientGone


def never() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


@pytest.fixture
async def reader():
    r = BodyReader(limit=10, timeout_s=0.2)
    await r.start()
    yield r
    await r.aclose()


async def test_a_stalled_body_times_out(reader):
    async def receive():
        return await never()
    with pytest.raises(RequestTimeout):
        await reader.read(receive, "5")
    assert not reader._reads and not reader._expired


async def test_a_cancellation_from_outside_is_not_a_timeout(reader):
    async def receive():
        return await never()
    task = asyncio.create_task(reader.read(receive, "5"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not reader._reads


async def test_chunks_limit_and_disconnect(reader):
    msgs = iter([{"type": "http.request", "body": b"ab", "more_body": True},
                 {"type": "http.request", "body": b"cd", "more_body": False}])

    async def receive():
        return next(msgs)
    assert await reader.read(receive, None) == b"abcd"
    with pytest.raises(PayloadTooLarge):
        await reader.read(receive, "11")

    async def gone():
        return {"type": "http.disconnect"}
    with pytest.raises(ClientGone):
        await reader.read(gone, None)
    assert not reader._reads
