"""Builds redis-py clients from settings."""

from .auth import ConnectionPolicy
from .factory import async_client, connection_policy, seed_address, sync_client

__all__ = ["ConnectionPolicy", "async_client", "connection_policy", "seed_address", "sync_client"]
