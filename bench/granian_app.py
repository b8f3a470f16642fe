"""Portcullis as an ASGI app factory for granian (bench only; not a project entry point).

    PORTCULLIS_CONFIG=cfg.yaml granian --interface asgi --factory bench.granian_app:app

Built the way `portcullis serve` builds it (settings, JSON logging, create_app),
so the only difference measured is the server.
"""
from __future__ import annotations

import os
from typing import Any


def app() -> Any:
    from gateway.app import create_app
    from gateway.logs import configure_logging
    from gateway.settings import load_settings

    settings = load_settings(os.environ["PORTCULLIS_CONFIG"], os.environ)
    configure_logging(settings.logging.level)
    return create_app(settings)
