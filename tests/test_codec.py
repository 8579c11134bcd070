"""The wire format and serializers, without any store."""

from __future__ import annotations

import os
import pickle
import zlib
from dataclasses import dataclass
from typing import Any

import pytest

from kvcache import (
    ConfigurationError,
    JsonSerializer,
    PickleSerializer,
    SerializationError,
    Serializer,
)
from kvcache._core.codec import PLAIN, TIMED, ZLIB, Codec, fresh_until, is_stale, retime

KEY = b"0123456789abcdef-signing-key"


@dataclass
class Point:
    x: int
    y: int


class Exploit:
    def __reduce__(self) -> tuple[Any, ...]:
        return (pytest.fail, ("a tampered pickle was loaded",))


def test_integers_are_stored_as_plain_decimal_text() -> None:
    codec = Codec()
    assert codec.encode(42) == b"42"
    assert codec.encode(-7) == b"-7"
    assert codec.decode(b"42") == 42
    assert codec.encode(True) == PLAIN + b"true"  # bool is not a counter


def test_other_values_carry_a_header_byte() -> None:
    codec = Codec()
    assert codec.encode("hi") == PLAIN + b'"hi"'
    assert codec.encode({"a": [1]}) == PLAIN + b'{"a":[1]}'


def test_compression_above_the_threshold_only_when_it_pays() -> None:
    codec = Codec(compress_threshold=100)
    small = codec.encode("x" * 50)
    big = codec.encode("x" * 5000)
    assert small[:1] == PLAIN
    assert big[:1] == ZLIB
    assert len(big) < 200
    assert codec.decode(big) == "x" * 5000
    assert Codec(compress_threshold=None).encode("x" * 5000)[:1] == PLAIN

    class Raw:  # passes bytes through, so the payload below is incompressible
        def dumps(self, value: Any) -> bytes:
            return bytes(value)

        def loads(self, data: bytes) -> Any:
            return data

    noise = os.urandom(500)
    raw = Codec(Raw(), compress_threshold=100)
    assert raw.encode(noise) == PLAIN + noise
    assert raw.decode(raw.encode(noise)) == noise


def test_a_value_kept_for_fail_safe_carries_its_logical_expiry() -> None:
    codec = Codec(compress_threshold=100)
    wrapped = codec.encode({"a": 1}, fresh_until=1_700_000_000_123)
    assert wrapped == TIMED + (1_700_000_000_123).to_bytes(8, "big") + PLAIN + b'{"a":1}'
    assert codec.decode(wrapped) == {"a": 1}
    assert fresh_until(wrapped) == 1_700_000_000_123
    assert is_stale(wrapped, 1_700_000_000_123)
    assert not is_stale(wrapped, 1_700_000_000_122)
    big = codec.encode("x" * 5000, fresh_until=5)
    assert big[9:10] == ZLIB
    assert codec.decode(big) == "x" * 5000
    assert codec.encode(7, fresh_until=5) == b"7"  # an int stays a counter
    assert fresh_until(b"7") is None
    assert not is_stale(PLAIN + b"1", 10**15)
    assert retime(wrapped, 9) == TIMED + (9).to_bytes(8, "big") + PLAIN + b'{"a":1}'
    assert retime(wrapped, None) == PLAIN + b'{"a":1}'


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"abc",
        b"1.5",
        b" 12",
        b"1_000",
        b"\x00{bad",
        b"\x01" + b"not zlib",
        b"\x02x",
        b"\x02" + bytes(8),  # wrapped nothing
        b"\x02" + bytes(8) + b"\x02" + bytes(8) + b"\x001",  # wrapped twice
    ],
    ids=repr,
)
def test_foreign_payloads_raise_serialization_error(payload: bytes) -> None:
    with pytest.raises(SerializationError):
        Codec().decode(payload)


def test_truncated_and_oversized_zlib_are_refused() -> None:
    whole = zlib.compress(b'"' + b"x" * 10_000 + b'"')
    with pytest.raises(SerializationError):
        Codec().decode(ZLIB + whole[:-8])
    bomb = zlib.compress(b" " * (1024 * 1024 + 1))
    with pytest.raises(SerializationError, match="larger than max_value_size"):
        Codec(max_value_size=1024 * 1024).decode(ZLIB + bomb)


def test_json_refuses_what_it_cannot_represent() -> None:
    with pytest.raises(SerializationError, match="bytes"):
        Codec().encode(b"raw")


def test_pickle_round_trips_python_objects() -> None:
    codec = Codec(PickleSerializer())
    assert codec.decode(codec.encode(Point(1, 2))) == Point(1, 2)
    assert codec.decode(codec.encode({"t": (1, 2), "s": {3}})) == {"t": (1, 2), "s": {3}}


def test_signed_pickle_round_trips_and_keeps_the_pickle_header() -> None:
    codec = Codec(PickleSerializer(KEY), compress_threshold=None)
    payload = codec.encode(Point(3, 4))
    assert payload[1:2] == b"\x80"  # after our header: pickle's PROTO opcode
    assert codec.decode(payload) == Point(3, 4)


def test_signed_pickle_rejects_tampering_without_unpickling() -> None:
    codec = Codec(PickleSerializer(KEY))
    planted = PLAIN + pickle.dumps(Exploit())  # an attacker without the key
    with pytest.raises(SerializationError, match="signature"):
        codec.decode(planted)
    forged = PLAIN + pickle.dumps(Exploit()) + b"\x00" * 32
    with pytest.raises(SerializationError, match="signature"):
        codec.decode(forged)
    other_key = Codec(PickleSerializer(b"another-key-of-16+bytes")).encode(Exploit.__name__)
    with pytest.raises(SerializationError, match="signature"):
        codec.decode(other_key)
    genuine = bytearray(codec.encode("value"))
    genuine[-40] ^= 1  # flip one bit of the body
    with pytest.raises(SerializationError, match="signature"):
        codec.decode(bytes(genuine))


def test_serializer_reprs_hide_the_key() -> None:
    assert KEY.decode() not in repr(PickleSerializer(KEY))
    assert "signed=True" in repr(PickleSerializer(KEY))


def test_bad_serializer_settings() -> None:
    with pytest.raises(ConfigurationError):
        PickleSerializer(b"short")
    with pytest.raises(ConfigurationError):
        PickleSerializer(protocol=1)
    with pytest.raises(ConfigurationError):
        Codec(serializer="json")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Codec(compress_threshold=-1)
    for size in (0, -1, 1.5, None):
        with pytest.raises(ConfigurationError, match="max_value_size"):
            Codec(max_value_size=size)  # type: ignore[arg-type]


def test_custom_serializer() -> None:
    class Upper:
        def dumps(self, value: Any) -> bytes:
            return str(value).upper().encode()

        def loads(self, data: bytes) -> Any:
            return data.decode().lower()

    codec = Codec(Upper())
    assert codec.encode("abc") == PLAIN + b"ABC"
    assert codec.decode(codec.encode("abc")) == "abc"
    assert isinstance(JsonSerializer(), Serializer)
