"""Builds redis-py clients from settings."""

from .factory import async_client, sync_client

__all__ = ["async_client", "sync_client"]
