"""Demo servers for the README tour (`portcullis demo ...`), installed with the `demo` extra.

Nothing here is imported by the gateway: the CLI imports a demo module only when
its command runs, so the `mcp` SDK stays optional.
"""
