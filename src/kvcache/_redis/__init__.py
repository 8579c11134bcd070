"""The only package that talks to redis-py: the stores over its clients, the mapping of its
errors to kvcache's, probes, raw commands, the client factory and authentication."""
