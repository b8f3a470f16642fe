"""The HTTP-tool surface (`POST /tools/{name}`): OpenAI's error format, its own metrics label."""
from __future__ import annotations

from gateway.surfaces.openai import error_body, error_response, id_headers, limit_headers

NAME = "tools"

__all__ = ["NAME", "error_body", "error_response", "id_headers", "limit_headers"]
