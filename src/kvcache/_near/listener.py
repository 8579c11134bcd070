"""The near cache listener's shell: the thread that runs the pure ``Feed`` and reconnects."""

from __future__ import annotations

import logging
import random
import threading

from kvcache._core import backoff, forks
from kvcache._core.drivers import run
from kvcache._near.cache import Feed
from kvcache.errors import ConfigurationError, KVCacheError

log = logging.getLogger("kvcache.supervisor")  # the logger the README names for it

RECONNECT_BASE = 0.05  # seconds: the first wait after a failure


class ListenerThread:
    """The near cache's listener shell: a daemon thread that runs ``Feed.listen`` (pure,
    ``_near/cache.py``), and after a failure reconnects on a jittered backoff (0.05 s up to
    ``retry_max``). Until the feed is caught up again the near cache is bypassed. A forked
    child starts its own on its first use of ``ensure_running``."""

    def __init__(self, feed: Feed, retry_max: float = 1.0) -> None:
        self._feed = feed
        self._retry_max = retry_max
        self._disabled = False  # Redis cannot do it (< 7.0): never restarted
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        forks.register(self)

    def after_fork(self) -> None:
        # The parent's thread does not exist here; the next get starts this process's own.
        self._thread = None
        self._lock = threading.Lock()
        stopped, self._stopped = self._stopped.is_set(), threading.Event()
        if stopped:
            self._stopped.set()

    def ensure_running(self) -> None:
        thread = self._thread
        if (thread is None or not thread.is_alive()) and not self._stopped.is_set():
            if self._disabled:
                return
            with self._lock:
                if self._thread is thread:
                    self._thread = threading.Thread(
                        target=self._loop, name="kvcache-near-listener", daemon=True
                    )
                    self._thread.start()

    def stop(self, wait: float = 0.0) -> None:
        """For good: the reader refuses to reconnect (a read in flight fails at once) and the
        thread ends (``wait``: up to that many seconds for it)."""
        self._stopped.set()
        self._feed.reader.close(final=True)
        thread = self._thread
        if wait and thread is not None and thread is not threading.current_thread():
            thread.join(wait)

    def _loop(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            try:
                run(self._feed.listen())
            except ConfigurationError as exc:  # Redis cannot do it (< 7.0): stay bypassed
                self._disabled = True
                log.warning("kvcache: near cache disabled: %s", exc)
                return
            except Exception as exc:  # never die: the near cache would stay bypassed for good
                if self._stopped.is_set():
                    return
                if failures == 0:
                    level = logging.INFO if isinstance(exc, KVCacheError) else logging.ERROR
                    log.log(level, "kvcache: near cache listener failed (%r); reconnecting", exc)
                failures += 1
                wait = backoff.delay(RECONNECT_BASE, self._retry_max, failures, random.random())
                self._stopped.wait(wait)
            else:
                failures = 0
