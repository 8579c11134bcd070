"""Builds redis-py clients from settings."""

from .factory import async_client, seed_address, sync_client

__all__ = ["async_client", "seed_address", "sync_client"]
