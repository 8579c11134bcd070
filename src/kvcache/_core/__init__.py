"""The sans-IO core: keys, TTLs, the codec, the state machine, the journal, the breaker and the
operations, written once for both shells. Nothing here opens a socket, starts a thread or
needs an event loop; it yields the store calls it wants and the shells carry them out."""
