"""Agent lifecycle backends (gateway.protocols.LifecycleStore and LifecycleBus): SQLite and
PostgreSQL stores, the in-process and Redis pub/sub buses. Loaded by name through gateway.registry."""
