"""API key generation and hashing. Only the SHA-256 hex of a key is ever stored."""
from __future__ import annotations

import hashlib
import secrets


def hash_key(key: str) -> str:
    """SHA-256 hex of the key text, the form kept in agents.yaml."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key(prefix: str = "pk-") -> tuple[str, str]:
    """A fresh random key (256 bits, URL-safe) and its hash: (key, sha256 hex)."""
    key = prefix + secrets.token_urlsafe(32)
    return key, hash_key(key)
