"""The operators' admin API (contract 7): its own listener (listener.py: `AdminListener`,
`admin_listener`), hashed tokens with scopes, every call audited, OpenAPI at
/admin/openapi.json. The CLI's operator commands are in cli.py. Nothing is imported here, so
`portcullis agents ...` does not load the server side."""
