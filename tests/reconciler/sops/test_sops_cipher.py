"""The value cipher, Go-compatible plaintext encodings, the MAC's AAD, flattening and Shamir."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta, timezone
from itertools import combinations

import pytest
from ruamel.yaml import YAML

from reconciler.sops import SopsDecryptionError, SopsFormatError, shamir
from reconciler.sops.cipher import (
    Comment,
    decrypt_value,
    encrypt_value,
    format_go_float,
    format_rfc3339_nano,
    is_encrypted_string,
    parse_rfc3339,
    to_bytes,
)
from reconciler.sops.flat import parse_dotenv, parse_ini, unflatten_metadata
from reconciler.sops.mac import lastmodified_aad

KEY = bytes(range(32))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (2.0, "2"),
        (1e20, "100000000000000000000"),
        (25.4, "25.4"),
        (0.5, "0.5"),
        (1e-7, "0.0000001"),
        (1234568000.0, "1234568000"),
        (-1.5, "-1.5"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_floats_format_like_go_strconv(value: float, text: str) -> None:
    assert format_go_float(value) == text


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (date(2024, 1, 1), "2024-01-01T00:00:00Z"),
        (datetime(2024, 1, 1, 12, 30), "2024-01-01T12:30:00Z"),
        (datetime(2006, 1, 2, 15, 4, 5, tzinfo=timezone(timedelta(hours=7))), "2006-01-02T15:04:05+07:00"),
        (datetime(2006, 1, 2, 15, 4, 5, 120000, tzinfo=UTC), "2006-01-02T15:04:05.12Z"),
        (datetime(2006, 1, 2, tzinfo=timezone(timedelta(hours=-3, minutes=-30))), "2006-01-02T00:00:00-03:30"),
    ],
)
def test_times_format_like_go_marshal_text(value: date, text: str) -> None:
    assert format_rfc3339_nano(value) == text
    assert format_rfc3339_nano(parse_rfc3339(text)) == text


@pytest.mark.parametrize(
    "value",
    ["text", "ünïcode ✓", "multi\nline\n", 0, -42, 2**62, 2.5, True, False, datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)],
)
def test_every_type_round_trips_through_the_cipher(value: object) -> None:
    encrypted = encrypt_value(value, KEY, "a:b:")
    assert is_encrypted_string(encrypted)
    decrypted = decrypt_value(encrypted, KEY, "a:b:")
    assert decrypted == value and isinstance(decrypted, type(value))


def test_comment_and_bytes_round_trip() -> None:
    assert decrypt_value(encrypt_value(Comment(" note"), KEY, ":"), KEY, ":") == Comment(" note")
    assert decrypt_value(encrypt_value(b"\x00\xff", KEY, "k:"), KEY, "k:") == b"\x00\xff"


def test_the_key_path_is_bound_as_aad() -> None:
    encrypted = encrypt_value("s3cr3t-aad", KEY, "app:password:")
    with pytest.raises(SopsDecryptionError) as caught:
        decrypt_value(encrypted, KEY, "app:user:")
    assert "s3cr3t-aad" not in str(caught.value) and encrypted not in str(caught.value)


def test_empty_strings_are_stored_in_clear() -> None:
    assert encrypt_value("", KEY, "k:") == ""
    assert decrypt_value("", KEY, "k:") == ""


def test_iv_is_32_bytes_and_fresh() -> None:
    first, second = (encrypt_value("same", KEY, "k:") for _ in range(2))
    assert first != second
    assert "iv:" in first and len(first.split("iv:")[1].split(",")[0]) == 44  # base64 of 32 bytes


@pytest.mark.parametrize("text", ["True", "true", "1", "t", "T", "TRUE"])
def test_bools_decode_like_go_parse_bool(text: str) -> None:
    from reconciler.sops.cipher import decode_plaintext

    assert decode_plaintext(text.encode(), "bool") is True
    assert (
        decode_plaintext(text.lower().replace("true", "false").replace("1", "0").replace("t", "f").encode(), "bool")
        is False
    )


def test_undecodable_plaintext_names_the_type_only() -> None:
    from reconciler.sops.cipher import decode_plaintext

    with pytest.raises(SopsFormatError) as caught:
        decode_plaintext(b"not-a-number-xyz", "int")
    assert "not-a-number-xyz" not in str(caught.value) and "'int'" in str(caught.value)


def test_malformed_enc_strings_are_format_errors() -> None:
    for text in (
        "ENC[AES256_GCM,data:@@,iv:AAAA,tag:AAAA,type:str]",
        "plain",
        "ENC[AES256_GCM,data:QQ==,iv:QQ==,tag:QQ==,type:str]",
    ):
        with pytest.raises(SopsFormatError):
            decrypt_value(text, KEY, "k:")


def test_ruamel_scalar_types_hash_as_go_types() -> None:
    tree = YAML(typ="rt").load("a: &x true\nb: *x\nc: 1.0\nd: 0x1F\ne: yes\nf: 2024-01-01\n")
    assert [to_bytes(v) for v in tree.values()] == [b"True", b"True", b"1", b"31", b"yes", b"2024-01-01T00:00:00Z"]


@pytest.mark.parametrize(
    ("stored", "aad"),
    [
        ("2026-11-28T12:00:00Z", "2026-11-28T12:00:00Z"),
        ("2026-11-28T12:00:00.123456Z", "2026-11-28T12:00:00Z"),
        ("2026-11-28T12:00:00+00:00", "2026-11-28T12:00:00Z"),
        ("2026-11-28T14:00:00+02:00", "2026-11-28T14:00:00+02:00"),
        (datetime(2026, 11, 28, 12, tzinfo=UTC), "2026-11-28T12:00:00Z"),
    ],
)
def test_lastmodified_is_reformatted_like_go_for_the_mac_aad(stored: object, aad: str) -> None:
    assert lastmodified_aad(stored) == aad


def test_flattened_metadata_unflattens() -> None:
    flat = {
        "pgp__list_0__map_fp": "FP0",
        "pgp__list_1__map_fp": "FP1",
        "pgp__list_0__map_enc": "line1\\nline2",
        "key_groups__list_0__map_age__list_0__map_recipient": "age1x",
        "lastmodified": "2026-01-01T00:00:00Z",
    }
    assert unflatten_metadata(flat) == {
        "pgp": [{"fp": "FP0", "enc": "line1\nline2"}, {"fp": "FP1"}],
        "key_groups": [{"age": [{"recipient": "age1x"}]}],
        "lastmodified": "2026-01-01T00:00:00Z",
    }


def test_dotenv_keeps_spaces_and_unescapes_newlines() -> None:
    tree = parse_dotenv("foo =  bar\nmulti=a\\nb\n#comment\nsops_version=3\n", file="x.env")
    assert [tree["foo "], tree["multi"], tree["sops"]] == ["  bar", "a\nb", {"version": "3"}]


def test_ini_reads_go_ini_quoting() -> None:
    text = 'k1 = plain ; inline comment\nk2 = "quoted "\nk3 = """multi\nline"""\nk4 = `a;b`\n[sect]\nx: y\n'
    tree = parse_ini(text, file="x.ini")
    assert tree == {"DEFAULT": {"k1": "plain", "k2": "quoted ", "k3": "multi\nline", "k4": "a;b"}, "sect": {"x": "y"}}


@pytest.mark.parametrize(("parts", "threshold"), [(2, 2), (3, 2), (5, 3), (4, 4)])
def test_shamir_any_threshold_subset_rebuilds_the_secret(parts: int, threshold: int) -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, parts, threshold)
    assert all(len(share) == 33 for share in shares)
    for subset in combinations(shares, threshold):
        assert shamir.combine(list(subset)) == secret
    if threshold > 2:
        assert shamir.combine(shares[: threshold - 1]) != secret


def test_shamir_rejects_bad_input() -> None:
    share = shamir.split(b"k" * 32, 2, 2)[0]
    for bad in ([share], [share, share], [share, share[:-2]]):
        with pytest.raises(Exception, match="Shamir"):
            shamir.combine(bad)


def test_times_keep_go_nanoseconds_through_the_cipher_and_yaml() -> None:
    from reconciler.sops.formats import parse_yaml

    text = "2006-01-02T15:04:05.123456789+07:00"
    assert to_bytes(decrypt_value(encrypt_value(parse_rfc3339(text), KEY, "t:"), KEY, "t:")) == text.encode()
    clear = parse_yaml(f"stamp: {text}\n", file="x.yaml")[0]["stamp"]
    assert to_bytes(clear) == text.encode()  # ruamel alone would round to microseconds


def test_json_output_writes_numbers_as_go_does() -> None:
    from reconciler.sops import render

    assert render({"a": 2.0, "b": 1e20, "c": 0.5, "d": 7}, "json").split() == [
        "{",
        '"a":',
        "2,",
        '"b":',
        "100000000000000000000,",
        '"c":',
        "0.5,",
        '"d":',
        "7",
        "}",
    ]


def test_a_comment_item_inside_a_list_is_not_data() -> None:
    """Go sops writes a comment inside a YAML list as a `type:comment` list item."""
    from reconciler.sops.mac import MacHasher
    from reconciler.sops.metadata import EncryptionRule
    from reconciler.sops.tree import Place, decrypt_tree

    items = ["db1", Comment(" note"), "db2"]
    tree = {"hosts": [encrypt_value(item, KEY, "hosts:") for item in items]}
    hasher, reference = MacHasher(mac_only_encrypted=False), MacHasher(mac_only_encrypted=False)
    out = decrypt_tree(
        tree, data_key=KEY, rule=EncryptionRule(), hasher=hasher, mac_only_encrypted=False, place=Place()
    )
    assert out == {"hosts": ["db1", "db2"]}
    reference.add("db1")
    reference.add("db2")
    assert hasher.hexdigest() == reference.hexdigest()  # comments stay out of the MAC
