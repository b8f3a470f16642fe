"""A gateway with limits in Redis serves the first request after Redis restarts.

Its pooled Redis connection was closed by the old server; the pool must replace it before
sending the reserve (which may not be re-sent: it is not idempotent), not fail the request.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai

from tests.support.harness import KEYS
from tests.support.redis_process import RedisProcess


def test_the_first_request_after_a_redis_restart_is_served(make_gateway, tmp_path):
    server = RedisProcess(tmp_path).start()
    try:
        gw = make_gateway(limits__backend="redis", limits__redis_url=server.url, limits__redis_timeout_s=10.0)
        c = openai.OpenAI(base_url=gw.url + "/v1", api_key=KEYS["observer"], max_retries=0)

        def embed(_: object = None) -> str:
            raw = c.embeddings.with_raw_response.create(model="text-embedding-3-small", input="x")
            return raw.headers["x-request-id"]

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(embed, range(8)))  # the pool holds connections to this Redis
            server.kill()
            server.start()  # the same port, empty, while the gateway's loop keeps running
            rid = embed()  # max_retries=0: a 503 would raise here
            assert gw.audit_row(rid)["status"] == 200
            assert len(list(pool.map(embed, range(8)))) == 8
    finally:
        server.kill()
