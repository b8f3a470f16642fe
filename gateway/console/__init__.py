"""The governance console (issue 13): server-rendered pages for operators on the admin listener."""
from gateway.console.app import console_routes

__all__ = ["console_routes"]
