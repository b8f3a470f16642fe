"""The tools config the tool tests use: the orders MCP server and four HTTP tools on the test upstream."""
from __future__ import annotations

from typing import Any


def tools_config(orders_url: str, upstream_url: str) -> dict[str, Any]:
    return {"servers": {"orders": {"kind": "mcp", "url": orders_url}},
            "http": {"weather": {"url": upstream_url + "/tools/weather", "method": "POST",
                                 "annotations": {"readOnlyHint": True}},
                     "weather_get": {"url": upstream_url + "/tools/weather", "method": "GET",
                                     "annotations": {"readOnlyHint": True}},
                     "wipe_cache": {"url": upstream_url + "/tools/wipe", "method": "POST",
                                    "annotations": {"destructiveHint": True}},
                     "broken": {"url": upstream_url + "/tools/broken", "method": "POST",
                                "annotations": {"readOnlyHint": True}}}}
