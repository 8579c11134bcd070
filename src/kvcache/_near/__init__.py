"""The near cache: a per-process L1 in front of Redis and the feed that invalidates it."""
