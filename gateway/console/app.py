"""console_routes(services, book): the governance console's routes, appended to the admin app
by gateway/admin/app.py:create_admin_app (so it exists exactly when the admin listener does)."""
from __future__ import annotations

from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles

from gateway.admin.auth import TokenBook
from gateway.console.live import live_routes
from gateway.console.login import login_routes
from gateway.console.views_agents import agents_routes
from gateway.console.views_ops import ops_routes
from gateway.console.views_overview import overview_routes
from gateway.console.views_policy import policy_routes
from gateway.console.web import HERE, Console
from gateway.console.writes import write_routes
from gateway.services import Services


def console_routes(services: Services, book: TokenBook) -> list[BaseRoute]:
    c = Console(services, book)
    static = Mount("/console/static", StaticFiles(directory=HERE / "static"), name="static")
    return [*login_routes(c), *overview_routes(c), *live_routes(c), *agents_routes(c), *ops_routes(c),
            *policy_routes(c), *write_routes(c), static]
