"""Benchmarks for Portcullis (not tests): `python -m bench run | micro | profile`.

Nothing here runs at import time; every server is started by the command that
needs it, on 127.0.0.1, and stopped again when that command ends.
"""
