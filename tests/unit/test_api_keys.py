"""API keys: format, parsing, hashing, the verdict on a presented key (pure)."""

from __future__ import annotations

import pytest

from services.router.core.api_keys import (
    KeyRecord,
    Limits,
    ParsedKey,
    bearer_key,
    new_key,
    parse_key,
    presented_key,
    refusal_message,
    secret_hash,
    verify,
)

SECRET = "S" * 43
KEY = f"tk-0123456789abcdef-{SECRET}"


@pytest.mark.parametrize(("header", "key"), [
    (None, None), ("", None), ("Bearer", None), ("Bearer   ", None), ("Basic abc", None),
    ("Bearer abc", "abc"), ("bearer abc", "abc"), ("BEARER  abc ", "abc"),
    (f"Bearer {KEY}", KEY),
])
def test_bearer_key(header: str | None, key: str | None) -> None:
    assert bearer_key(header) == key


@pytest.mark.parametrize(("text", "parsed"), [
    (KEY, ParsedKey("0123456789abcdef", SECRET)),
    (f"tk-0123456789abcdef-{'-_aZ9' * 8}xyz", ParsedKey("0123456789abcdef", "-_aZ9" * 8 + "xyz")),
    ("sk-0123456789abcdef-" + SECRET, None),  # another prefix
    ("tk-0123456789ABCDEF-" + SECRET, None),  # the id is lower-case hex
    ("tk-0123456789abcde-" + SECRET, None),  # short id
    ("tk-0123456789abcdef-" + SECRET[:-1], None),  # short secret
    ("tk-0123456789abcdef-" + SECRET + "S", None),  # long secret
    ("tk-0123456789abcdef-" + SECRET[:-1] + "=", None),  # not URL-safe base64
    (KEY + "\n", None),
])
def test_parse_key(text: str, parsed: ParsedKey | None) -> None:
    assert parse_key(text) == parsed


def test_new_keys_parse_and_differ() -> None:
    (one, parsed), (two, _) = new_key(), new_key()
    assert one != two
    assert parse_key(one) == parsed


def test_a_parsed_keys_repr_hides_its_secret() -> None:
    assert SECRET not in repr(parse_key(KEY))


RECORD = KeyRecord("0123456789abcdef", "acme", secret_hash("0123456789abcdef", SECRET))


@pytest.mark.parametrize(("header", "record", "verdict"), [
    (None, RECORD, "missing"),
    ("Bearer nope", RECORD, "malformed"),
    (f"Bearer {KEY}", None, "unknown"),
    (f"Bearer tk-0123456789abcdef-{'T' * 43}", RECORD, "wrong_secret"),
    (f"Bearer {KEY}", RECORD, RECORD),
])
def test_the_verdict_on_a_presented_key(header: str | None, record: KeyRecord | None,
                                        verdict: object) -> None:
    key = presented_key(header)
    assert (key if isinstance(key, str) else verify(key, record)) == verdict


def test_a_wrong_secret_and_an_unknown_key_read_the_same() -> None:
    assert refusal_message("wrong_secret") == refusal_message("unknown")


def test_the_hash_binds_the_id() -> None:
    assert secret_hash("0123456789abcdef", SECRET) != secret_hash("fedcba9876543210", SECRET)


def test_records_round_trip_through_redis_fields() -> None:
    record = KeyRecord("0123456789abcdef", "acme", "ab" * 32, Limits(60, 1000, 2), 1.5)
    assert KeyRecord.from_fields(record.key_id, record.to_fields()) == record
    assert SECRET not in str(record.to_fields())
