"""The Flask-Caching backend, through Flask-Caching itself (``cached``, ``memoize``,
``delete_memoized``, ``clear``) and Flask's test client, against a real redis-server, then
with Redis blackholed through a ChaosProxy."""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask_caching import Cache as FlaskCache

from conftest import PAGE_BOUND, planted_pickle, slowest_page
from kvcache import State, ValueTooLargeError
from kvcache._core.codec import PLAIN
from kvcache.errors import ConfigurationError
from kvcache.testing import ChaosProxy, RedisServer

pytestmark = pytest.mark.redis


class App:
    """A Flask app whose views count how often they really run."""

    def __init__(self, url: str, **config: Any) -> None:
        self.app = Flask(__name__)
        config.setdefault("SECRET_KEY", "a test secret key")
        self.app.config.update(
            CACHE_TYPE="kvcache.integrations.flask.KVCache",
            CACHE_REDIS_URL=url,
            CACHE_KEY_PREFIX="app_",
            CACHE_DEFAULT_TIMEOUT=60,
            **config,
        )
        self.cache = FlaskCache(self.app)
        self.runs = {"page": 0, "square": 0}

        @self.app.route("/page")
        @self.cache.cached(timeout=30)
        def page() -> str:
            self.runs["page"] += 1
            return f"page {self.runs['page']}"

        @self.cache.memoize(timeout=30)
        def square(n: int) -> dict[str, int]:
            self.runs["square"] += 1
            return {"n": n, "square": n * n}

        self.square = square

        @self.app.route("/square/<int:n>")
        def square_view(n: int) -> dict[str, int]:
            return square(n)

        self.client = self.app.test_client()

    @property
    def backend(self) -> Any:
        return self.cache.cache


@pytest.fixture
def app(redis_url: str) -> Iterator[App]:
    made = App(redis_url)
    yield made
    made.backend.kvcache.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as client:
        yield client


def test_cached_view_runs_once(app: App, raw: redis.Redis) -> None:
    assert app.client.get("/page").text == "page 1"
    assert app.client.get("/page").text == "page 1"
    assert app.runs["page"] == 1
    assert any(key.startswith(b"app_view/") for key in raw.scan_iter("app_*"))


def test_memoize_and_delete_memoized(app: App) -> None:
    assert app.client.get("/square/4").json == {"n": 4, "square": 16}
    assert app.client.get("/square/4").json == {"n": 4, "square": 16}
    assert app.runs["square"] == 1
    app.cache.delete_memoized(app.square, 4)
    assert app.client.get("/square/4").json == {"n": 4, "square": 16}
    assert app.runs["square"] == 2
    app.cache.delete_memoized(app.square)  # every argument
    app.client.get("/square/4")
    assert app.runs["square"] == 3


def test_clear_stays_in_the_prefix(app: App, raw: redis.Redis) -> None:
    app.client.get("/page")
    raw.set("someone_else", b"x")
    assert app.cache.clear() is True
    assert list(raw.scan_iter("app_*")) == []
    assert raw.get("someone_else") == b"x"
    app.client.get("/page")
    assert app.runs["page"] == 2


def test_cachelib_api_semantics(app: App, raw: redis.Redis) -> None:
    cache = app.cache
    assert cache.set("a", {"x": 1}) is True
    assert cache.get("a") == {"x": 1}
    assert cache.add("a", 2) is False
    assert cache.add("b", 2) is True
    assert cache.get_many("a", "b", "missing") == [{"x": 1}, 2, None]
    assert cache.get_dict("a", "missing") == {"a": {"x": 1}, "missing": None}
    assert sorted(cache.set_many({"c": 3, "d": 4})) == ["c", "d"]
    assert cache.has("c")
    assert cache.delete("c") is True
    assert cache.delete("c") is False
    assert cache.delete_many("d", "missing") == ["d", "missing"]
    backend = app.backend  # (Flask-Caching's Cache does not proxy inc/dec)
    assert backend.inc("counter") == 1  # cachelib: a missing key starts at 0
    assert backend.inc("counter", 5) == 6
    assert backend.dec("counter", 2) == 4
    cache.set("forever", 1, timeout=0)  # 0: never expires
    assert raw.ttl("app_forever") == -1
    cache.set("default", 1)
    assert 50 < raw.ttl("app_default") <= 60
    cache.set("gone", 1)
    cache.set("gone", 2, timeout=-1)  # negative: nothing stored
    assert cache.get("gone") is None
    assert app.backend.kvcache.stats.errors == 0


def test_the_default_configuration_works(redis_url: str, raw: redis.Redis) -> None:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="the app's secret",  # signed pickle needs one (or a signing_key option)
        CACHE_TYPE="kvcache.integrations.flask.KVCache",
        CACHE_REDIS_URL=redis_url,
    )
    cache = FlaskCache(app)  # Flask-Caching's default prefix: "flask_cache_"
    try:
        assert cache.set("k", 1)
        assert cache.get("k") == 1
        assert raw.exists("flask_cache_:k")
        assert cache.set("/" + "x" * 2000, 1)  # long view keys (paths) are fine
    finally:
        cache.cache.kvcache.close()


def test_values_are_pickled_and_signed(app: App, raw: redis.Redis) -> None:
    app.cache.set("obj", {1, 2, 3})  # not JSON: pickle
    assert app.cache.get("obj") == {1, 2, 3}
    stored = raw.get("app_obj")
    assert stored == PLAIN + pickle.dumps({1, 2, 3}, pickle.HIGHEST_PROTOCOL) + stored[-32:]
    raw.set("app_obj", PLAIN + pickle.dumps({"planted"}))  # valid pickle, but unsigned
    assert app.cache.get("obj") is None  # not unpickled


@pytest.fixture
def proxy(redis_server: RedisServer) -> Iterator[ChaosProxy]:
    with ChaosProxy(redis_server.host, redis_server.port) as made:
        yield made


def test_pages_keep_rendering_fast_while_redis_is_blackholed(proxy: ChaosProxy) -> None:
    app = App(proxy.url)
    try:
        assert app.backend.kvcache.state is State.READY
        assert app.client.get("/square/3").status_code == 200
        proxy.blackhole()

        def page(n: int) -> None:
            for path in ("/page", f"/square/{n}"):
                assert app.client.get(path).status_code == 200

        assert slowest_page(page) < PAGE_BOUND
        assert app.backend.kvcache.state is State.DEGRADED
        assert app.client.get("/square/3").json == {"n": 3, "square": 9}
    finally:
        proxy.up()
        app.backend.kvcache.close()


def test_pickle_without_secret_key_is_refused_at_construction(
    redis_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    raw.set("app_k", planted_pickle(marker))

    def open_and_read() -> None:  # today's code got to the read, which ran the planted code
        made = App(redis_url, SECRET_KEY=None)
        try:
            made.cache.get("k")
        finally:
            made.backend.kvcache.close()

    with pytest.raises(ConfigurationError, match="SECRET_KEY"):
        open_and_read()
    assert not marker.exists()


def test_a_pickle_serializer_option_is_still_signed(
    redis_url: str, raw: redis.Redis, tmp_path: Path
) -> None:
    marker = tmp_path / "code-ran"
    made = App(redis_url, CACHE_OPTIONS={"serializer": "pickle"})
    try:
        made.cache.set("mine", {1, 2})
        assert made.cache.get("mine") == {1, 2}
        raw.set("app_k", planted_pickle(marker))
        assert made.cache.get("k") is None  # a miss, not the planted code
        assert not marker.exists()
    finally:
        made.backend.kvcache.close()


def test_unsigned_pickle_only_when_the_options_name_it(redis_url: str, raw: redis.Redis) -> None:
    made = App(redis_url, SECRET_KEY=None, CACHE_OPTIONS={"serializer": "pickle-unsigned"})
    try:
        raw.set("app_plain", PLAIN + pickle.dumps({"plain"}))
        assert made.cache.get("plain") == {"plain"}
    finally:
        made.backend.kvcache.close()


@pytest.fixture(scope="module")
def guarded() -> Iterator[RedisServer]:
    with RedisServer(password="p@ss:word/with&odd chars") as server:
        yield server


def flask_cache(**config: Any) -> FlaskCache:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="a test secret key", CACHE_TYPE="kvcache.integrations.flask.KVCache", **config
    )
    return FlaskCache(app)


def test_host_port_db_and_password_settings_are_honoured(guarded: RedisServer) -> None:
    cache = flask_cache(
        CACHE_REDIS_HOST="127.0.0.1",
        CACHE_REDIS_PORT=guarded.port,
        CACHE_REDIS_DB=3,
        CACHE_REDIS_PASSWORD=guarded.password,
        CACHE_KEY_PREFIX="hp_",
    )
    try:
        assert cache.cache.kvcache.state is State.READY
        assert cache.set("k", 1)
        with guarded.client(db=3) as db3:
            assert db3.exists("hp_k")
        assert cache.get("k") == 1
    finally:
        cache.cache.kvcache.close()


def test_the_redis_url_wins_over_host_and_port(guarded: RedisServer) -> None:
    # As in Flask-Caching's RedisCache: the URL's database wins; without one, CACHE_REDIS_DB.
    url = guarded.url.rpartition("/")[0]  # no database in the path
    cache = flask_cache(
        CACHE_REDIS_URL=url,
        CACHE_REDIS_HOST="192.0.2.1",  # TEST-NET: nothing answers there
        CACHE_REDIS_PORT=1,
        CACHE_REDIS_DB=2,
        CACHE_KEY_PREFIX="url_",
    )
    try:
        assert cache.set("k", 1)
        with guarded.client(db=2) as db2:
            assert db2.exists("url_k")
    finally:
        cache.cache.kvcache.close()
    cache = flask_cache(CACHE_REDIS_URL=url + "/4", CACHE_REDIS_DB=2, CACHE_KEY_PREFIX="url_")
    try:
        assert cache.set("k4", 1)
        with guarded.client(db=4) as db4:
            assert db4.exists("url_k4")
    finally:
        cache.cache.kvcache.close()


def test_the_first_write_of_an_app_lands_in_redis(redis_url: str) -> None:
    made = App(redis_url)
    assert made.cache.set("a", 1) is True
    with redis.Redis.from_url(redis_url) as admin:
        assert admin.exists("app_a")  # in Redis, not in the fallback
    assert (
        made.backend.kvcache.stats.fallback_hits + made.backend.kvcache.stats.fallback_misses == 0
    )


def test_memory_bounds_come_from_the_options(redis_url: str) -> None:
    options = {"max_value_size": 1000, "fallback_max_bytes": 100_000}
    made = App(redis_url, CACHE_OPTIONS=options)
    try:
        with pytest.raises(ValueTooLargeError, match="max_value_size"):
            made.cache.set("big", "x" * 2000)
        assert made.cache.get("big") is None
        assert "max_bytes=100000," in (made.backend.kvcache.health().fallback or "")
    finally:
        made.backend.kvcache.close()
