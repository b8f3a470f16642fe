"""MCP session -> agent binding stores (gateway.protocols.SessionStore): memory and Redis."""
