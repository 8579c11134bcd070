"""The shells around the core: `Cache` (threads) and `AsyncCache` (asyncio), the shared
construction (`CacheBase`), the probers and single-flight, each once per concurrency model."""
