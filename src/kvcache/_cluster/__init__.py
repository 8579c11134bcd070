"""Redis Cluster: the slot map and its refresh, the per-node stores, and the sharded adapter
that routes each key to its primary (a breaker per shard)."""
