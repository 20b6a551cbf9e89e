"""Files that must be refused, each with a clear error that names the file and key path, never a value."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sops_corpus import CORPUS, FLUX_AGE, KEYS, PGP_KEY_1, SopsLeakGuard

from reconciler.sops import (
    DataKeyUnavailable,
    KeyRing,
    MacMismatch,
    NotASopsFile,
    SopsDecryptionError,
    SopsError,
    SopsFormatError,
    decrypt_document,
    decrypt_file,
)
from reconciler.sops.cipher import encrypt_value

TYPES = CORPUS / "synthetic/types.yaml"
TYPES_DATA_KEY = bytes.fromhex("1f37e04e34da864fc326944f3ca685e469a506fe7481a2fb52a1e07608e6a8a4")


def refused(path: Path, keys: KeyRing, guard: SopsLeakGuard, error: type[SopsError] = SopsError) -> SopsError:
    with pytest.raises(error) as caught:
        decrypt_file(path, keys)
    guard.add(str(caught.value), repr(caught.value), caught.value.hint or "")
    assert "ENC[AES256_GCM,data:" not in str(caught.value)
    return caught.value


def edited(tmp_path: Path, source: Path, old: str, new: str, *, count: int = 1) -> Path:
    text = source.read_text(encoding="utf-8")
    assert old in text, old
    target = tmp_path / source.name
    target.write_text(text.replace(old, new, count), encoding="utf-8")
    return target


def ciphertext_of(path: Path, key: str) -> str:
    match = re.search(rf"^\s*{re.escape(key)}: (ENC\[[^\]]+\])", path.read_text(), re.MULTILINE)
    assert match, key
    return match.group(1)


def test_file_without_mac_is_refused(all_keys: KeyRing, sops_leak_guard: SopsLeakGuard) -> None:
    error = refused(CORPUS / "getsops/functional-tests/res/no_mac.yaml", all_keys, sops_leak_guard, MacMismatch)
    assert error.key_path == "sops.mac"
    assert "no MAC" in str(error)
    assert error.file and error.file.endswith("no_mac.yaml")


def test_tampered_mac_ciphertext_is_refused(
    tmp_path: Path, flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    mac = ciphertext_of(TYPES, "mac")
    data = mac.split("data:")[1].split(",")[0]
    forged = mac.replace(data, ("A" if data[0] != "A" else "B") + data[1:])
    error = refused(edited(tmp_path, TYPES, mac, forged), flux_age_keys, sops_leak_guard, MacMismatch)
    assert error.key_path == "sops.mac"


def test_validly_encrypted_but_wrong_mac_is_refused(
    tmp_path: Path, flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    forged = encrypt_value("0" * 128, TYPES_DATA_KEY, "2026-11-28T12:00:00Z")
    error = refused(
        edited(tmp_path, TYPES, ciphertext_of(TYPES, "mac"), forged), flux_age_keys, sops_leak_guard, MacMismatch
    )
    assert "MAC mismatch" in str(error)
    assert error.hint


def test_editing_a_clear_field_breaks_the_mac_unless_mac_only_encrypted(
    tmp_path: Path, flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    for name, is_protected in (("encrypted-regex.yaml", True), ("mac-only-encrypted.yaml", False)):
        path = edited(tmp_path, CORPUS / "synthetic" / name, "team: data", "team: ops")
        if is_protected:
            refused(path, flux_age_keys, sops_leak_guard, MacMismatch)
        else:
            assert decrypt_file(path, flux_age_keys)["metadata"]["labels"]["team"] == "ops"


def test_tampered_value_is_refused_naming_its_key_path(
    tmp_path: Path, flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    value = ciphertext_of(TYPES, "user")
    data = value.split("data:")[1].split(",")[0]
    forged = value.replace(data, ("A" if data[0] != "A" else "B") + data[1:])
    error = refused(edited(tmp_path, TYPES, value, forged), flux_age_keys, sops_leak_guard, SopsDecryptionError)
    assert not isinstance(error, MacMismatch)
    assert error.key_path == "nested.user"
    assert str(error).startswith(f"{tmp_path / 'types.yaml'}, nested.user: ")


def test_value_moved_to_another_key_does_not_decrypt(
    tmp_path: Path, flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    """The AAD binds each value to its key path, so swapping two ciphertexts is detected."""
    password, user = ciphertext_of(TYPES, "password"), ciphertext_of(TYPES, "user")
    path = edited(tmp_path, TYPES, password, "SWAP")
    path.write_text(path.read_text().replace(user, password).replace("SWAP", user))
    error = refused(path, flux_age_keys, sops_leak_guard, SopsDecryptionError)
    assert error.key_path == "password"


def test_clear_value_where_ciphertext_belongs_is_refused(
    tmp_path: Path, flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    path = edited(tmp_path, TYPES, ciphertext_of(TYPES, "password"), "hunter2-in-clear")
    error = refused(path, flux_age_keys, sops_leak_guard, SopsFormatError)
    assert error.key_path == "password"
    assert "hunter2" not in str(error)
    path = edited(tmp_path, TYPES, ciphertext_of(TYPES, "port"), "5432")
    assert "plain int" in str(refused(path, flux_age_keys, sops_leak_guard, SopsDecryptionError))


def test_wrong_key_lists_each_recipient_and_why(sops_leak_guard: SopsLeakGuard) -> None:
    with KeyRing.from_files([KEYS / "flux-age-global.txt"]) as wrong:
        error = refused(TYPES, wrong, sops_leak_guard, DataKeyUnavailable)
    assert isinstance(error, DataKeyUnavailable)
    assert [(a.kind, a.recipient) for a in error.attempts] == [("age", FLUX_AGE)]
    assert FLUX_AGE in str(error) and "none of the 1 loaded age identity matches" in str(error)
    assert error.key_path == "sops"


def test_pgp_file_without_a_keyring_names_both_fingerprints(no_keys: KeyRing, sops_leak_guard: SopsLeakGuard) -> None:
    error = refused(CORPUS / "getsops/example.yaml", no_keys, sops_leak_guard, DataKeyUnavailable)
    assert PGP_KEY_1 in str(error) and "D7229043384BCC60326C6FB9D8720D957C3D3074" in str(error)
    assert "no PGP keyring configured" in str(error)


def test_unpublished_pgp_key_says_no_secret_key(all_keys: KeyRing, sops_leak_guard: SopsLeakGuard) -> None:
    error = refused(
        CORPUS / "getsops/config/test_resources/example.yaml", all_keys, sops_leak_guard, DataKeyUnavailable
    )
    assert "E5297818703249D0C60E19E6824612478D1A4CCD: no secret key" in str(error)


def test_post_quantum_age_key_gives_a_clear_error_naming_the_recipient(sops_leak_guard: SopsLeakGuard) -> None:
    """pyrage cannot parse AGE-SECRET-KEY-PQ-1 identities nor decrypt age1pq1 stanzas."""
    with KeyRing.from_files([KEYS / "flux-age-pq.txt"]) as pq_only:
        assert pq_only.unusable_identities and not pq_only.age_identities
        error = refused(CORPUS / "flux/algorithms/age-pq.yaml", pq_only, sops_leak_guard, DataKeyUnavailable)
    message = str(error)
    assert "age age1pq1ehusfwsvrente8p6gafr4jemv2urnqfm4c59" in message
    assert "post-quantum" in message and "pyrage" in message and "flux-age-pq.txt line 3" in message
    assert error.hint and "Go sops" in error.hint


def test_shamir_needs_the_threshold_of_groups(flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard) -> None:
    error = refused(CORPUS / "synthetic/shamir-2-of-2.yaml", flux_age_keys, sops_leak_guard, DataKeyUnavailable)
    assert "only 1 of the 2 Shamir key groups" in str(error)
    assert "group 1: age age1henwn645" in str(error)


@pytest.mark.parametrize(
    "name",
    ["getsops/functional-tests/res/plainfile.yaml", "getsops/functional-tests/res/comments.yaml"],
)
def test_plain_file_is_not_a_sops_file(name: str, all_keys: KeyRing, sops_leak_guard: SopsLeakGuard) -> None:
    error = refused(CORPUS / name, all_keys, sops_leak_guard, NotASopsFile)
    assert "not encrypted with sops" in str(error) and error.hint


@pytest.mark.parametrize(
    ("suffix", "content"),
    [(".json", '{"password": "hunter2-json"}'), (".env", "PASSWORD=hunter2-env\n"), (".ini", "[s]\nk = hunter2-ini\n")],
)
def test_plain_files_of_other_formats_are_not_sops_files(
    suffix: str, content: str, tmp_path: Path, all_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    path = tmp_path / f"plain{suffix}"
    path.write_text(content)
    assert "hunter2" not in str(refused(path, all_keys, sops_leak_guard, NotASopsFile))


def test_decrypt_document_refuses_a_tree_without_sops(all_keys: KeyRing) -> None:
    with pytest.raises(NotASopsFile):
        decrypt_document({"kind": "Secret"}, all_keys, file="x.yaml")


def test_duplicate_keys_are_refused_without_quoting_values(
    tmp_path: Path, all_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("password: hunter2-first\npassword: hunter2-second\nsops: {}\n")
    error = refused(path, all_keys, sops_leak_guard, SopsFormatError)
    assert "duplicate key" in str(error) and "line 2" in str(error) and "hunter2" not in str(error)


def test_metadata_with_two_rules_is_refused(
    tmp_path: Path, flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    path = edited(
        tmp_path, TYPES, "    unencrypted_suffix: _unencrypted", "    unencrypted_suffix: _u\n    encrypted_regex: x"
    )
    assert "more than one" in str(refused(path, flux_age_keys, sops_leak_guard, SopsFormatError))


def test_regex_that_re2_rejects_is_refused(
    tmp_path: Path, flux_age_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    path = edited(tmp_path, TYPES, "    unencrypted_suffix: _unencrypted", "    encrypted_regex: ^(?!x)")
    assert "RE2" in str(refused(path, flux_age_keys, sops_leak_guard, SopsFormatError))


def test_top_level_sequence_and_garbage_are_refused(
    tmp_path: Path, all_keys: KeyRing, sops_leak_guard: SopsLeakGuard
) -> None:
    for name, content in (("list.yaml", "- a\n- b\n"), ("bad.yaml", "a: [unclosed\n"), ("bad.json", "{nope")):
        path = tmp_path / name
        path.write_text(content)
        refused(path, all_keys, sops_leak_guard, SopsFormatError)


def test_unsupported_key_type_is_named(tmp_path: Path, all_keys: KeyRing, sops_leak_guard: SopsLeakGuard) -> None:
    text = TYPES.read_text()
    kms_only = re.sub(r"    age:\n(?:        .*\n|    -   .*\n)+", "", text)
    kms_only = kms_only.replace(
        "sops:\n", "sops:\n    kms:\n    -   arn: arn:aws:kms:eu-west-1:1:key/k\n        enc: QUJD\n"
    )
    path = tmp_path / "kms.yaml"
    path.write_text(kms_only)
    error = refused(path, all_keys, sops_leak_guard, DataKeyUnavailable)
    assert "kms arn:aws:kms:eu-west-1:1:key/k: kms keys are not supported natively" in str(error)


def test_errors_survive_pickling(no_keys: KeyRing) -> None:
    import pickle

    with pytest.raises(DataKeyUnavailable) as caught:
        decrypt_file(TYPES, no_keys)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is DataKeyUnavailable and str(copy) == str(caught.value)
    assert copy.attempts == caught.value.attempts and copy.file == caught.value.file
