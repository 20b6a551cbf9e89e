"""The encryptor: Secret manifests and documents that our decryptor (and Go sops, if installed) reads."""

from __future__ import annotations

from pathlib import Path

import pytest
from ruamel.yaml import YAML
from sops_corpus import FLUX_AGE, FLUX_AGE_GLOBAL, KEYS, PGP_KEY_1

from reconciler.sops import (
    DataKeyUnavailable,
    EncryptionFailed,
    EncryptionRule,
    KeyConfigError,
    KeyRing,
    RecipientGroup,
    decrypt_bytes,
    decrypt_document,
    dump_yaml,
    encrypt_documents,
    encrypt_secret_manifest,
    find_creation_recipients,
)
from reconciler.sops.cipher import is_encrypted_string

VALUES = ["s3cr3t-pw", "ünïcode ✓ and spaces  ", "line one\nline two\n", "ENC[not really]", "yes"]


@pytest.mark.parametrize("value", VALUES)
def test_secret_manifest_round_trips(value: str, flux_age_keys: KeyRing) -> None:
    text = encrypt_secret_manifest("db-admin", value, age_recipients=[FLUX_AGE])
    document = YAML(typ="rt").load(text)
    assert document["kind"] == "Secret" and document["metadata"] == {"name": "db-admin"}
    assert is_encrypted_string(document["data"]["value"])
    assert value not in text
    assert decrypt_document(document, flux_age_keys, file="secret.yaml") == {
        "kind": "Secret",
        "metadata": {"name": "db-admin"},
        "data": {"value": value},
    }


def test_secret_manifest_has_a_complete_sops_block() -> None:
    metadata = YAML(typ="safe", pure=True).load(encrypt_secret_manifest("n", "v", age_recipients=[FLUX_AGE]))["sops"]
    assert list(metadata) == sorted(metadata)
    assert set(metadata) == {"age", "encrypted_regex", "lastmodified", "mac", "version"}
    assert metadata["encrypted_regex"] == "^(data|stringData)$"
    assert metadata["age"][0]["recipient"] == FLUX_AGE
    assert metadata["age"][0]["enc"].startswith("-----BEGIN AGE ENCRYPTED FILE-----\n")
    assert metadata["lastmodified"].endswith("Z") and is_encrypted_string(metadata["mac"])


def test_each_encryption_uses_a_fresh_data_key() -> None:
    first, second = (encrypt_secret_manifest("n", "same", age_recipients=[FLUX_AGE]) for _ in range(2))
    value = [YAML(typ="safe", pure=True).load(t)["data"]["value"] for t in (first, second)]
    assert value[0] != value[1]


def test_pgp_and_age_recipients_each_open_the_file(all_keys: KeyRing, flux_age_keys: KeyRing) -> None:
    text = encrypt_secret_manifest(
        "both", "v-both", age_recipients=[FLUX_AGE], pgp_fingerprints=[PGP_KEY_1], gnupghome=all_keys.gnupghome
    )
    with KeyRing.from_files(pgp_key_files=[KEYS / "getsops-pgp-functional-tests.asc"]) as pgp_only:
        assert decrypt_bytes(text, pgp_only, file="s.yaml", input_type="yaml")["data"]["value"] == "v-both"
    assert decrypt_bytes(text, flux_age_keys, file="s.yaml", input_type="yaml")["data"]["value"] == "v-both"


def test_editing_kind_or_name_breaks_the_mac(flux_age_keys: KeyRing) -> None:
    from reconciler.sops import MacMismatch

    text = encrypt_secret_manifest("db-admin", "v", age_recipients=[FLUX_AGE])
    with pytest.raises(MacMismatch):
        decrypt_bytes(text.replace("name: db-admin", "name: other"), flux_age_keys, file="s.yaml", input_type="yaml")


def test_shamir_groups_need_the_threshold(all_keys: KeyRing, flux_age_keys: KeyRing) -> None:
    groups = [RecipientGroup(age=(FLUX_AGE,)), RecipientGroup(age=(FLUX_AGE_GLOBAL,)), RecipientGroup(pgp=(PGP_KEY_1,))]
    plain = {"db": {"password": "shamir-pw", "port": 5432}, "note_unencrypted": "clear"}
    documents = encrypt_documents([plain], recipients=groups, shamir_threshold=2, gnupghome=all_keys.gnupghome)
    text = dump_yaml(documents)
    assert documents[0]["sops"]["shamir_threshold"] == 2 and len(documents[0]["sops"]["key_groups"]) == 3
    assert documents[0]["note_unencrypted"] == "clear"
    assert decrypt_bytes(text, all_keys, file="s.yaml", input_type="yaml") == plain
    with KeyRing.from_files([KEYS / "flux-age.txt", KEYS / "flux-age-global.txt"]) as two_age:
        assert decrypt_bytes(text, two_age, file="s.yaml", input_type="yaml") == plain
    with pytest.raises(DataKeyUnavailable, match="only 1 of the 2"):
        decrypt_bytes(text, flux_age_keys, file="s.yaml", input_type="yaml")


def test_multi_document_and_mac_only_encrypted_round_trip(flux_age_keys: KeyRing) -> None:
    docs = [{"kind": "Secret", "data": {"k": "one"}}, {"kind": "Secret", "data": {"k": 2}}]
    rule = EncryptionRule(kind="encrypted_regex", pattern="^data$")
    encrypted = encrypt_documents(
        docs, recipients=[RecipientGroup(age=(FLUX_AGE,))], rule=rule, mac_only_encrypted=True
    )
    text = dump_yaml(encrypted)
    assert text.count("\nsops:") == 2
    assert decrypt_bytes(text, flux_age_keys, file="m.yaml", input_type="yaml") == docs
    edited = text.replace("kind: Secret", "kind: Other", 1)  # clear field, outside a mac_only_encrypted MAC
    assert decrypt_bytes(edited, flux_age_keys, file="m.yaml", input_type="yaml")[0]["kind"] == "Other"


def test_bad_recipients_are_refused_clearly(all_keys: KeyRing) -> None:
    with pytest.raises(EncryptionFailed, match="no recipients"):
        encrypt_secret_manifest("n", "v", age_recipients=[])
    with pytest.raises(EncryptionFailed, match="not a valid age recipient"):
        encrypt_secret_manifest("n", "v", age_recipients=["age1notarecipient"])
    with pytest.raises(EncryptionFailed, match="post-quantum"):
        encrypt_secret_manifest("n", "v", age_recipients=["age1pq1" + "q" * 60])
    with pytest.raises(EncryptionFailed, match="no usable public key"):
        encrypt_secret_manifest("n", "v", age_recipients=[], pgp_fingerprints=["0" * 40], gnupghome=all_keys.gnupghome)
    with pytest.raises(EncryptionFailed, match="name"):
        encrypt_secret_manifest("has space", "v", age_recipients=[FLUX_AGE])


SOPS_CONFIG = f"""\
creation_rules:
  - path_regex: prod/.*\\.yaml$
    pgp: {PGP_KEY_1.lower()}
  - path_regex: secrets/
    age: >-
      {FLUX_AGE},
      {FLUX_AGE_GLOBAL}
"""


def test_creation_rules_pick_the_first_matching_rule(tmp_path: Path) -> None:
    (tmp_path / ".sops.yaml").write_text(SOPS_CONFIG)
    (tmp_path / "secrets" / "deep").mkdir(parents=True)
    assert find_creation_recipients(tmp_path / "secrets" / "deep" / "db.yaml") == ([FLUX_AGE, FLUX_AGE_GLOBAL], [])
    assert find_creation_recipients(tmp_path / "prod" / "x.yaml") == ([], [PGP_KEY_1])
    assert find_creation_recipients(tmp_path / "elsewhere.yaml") == ([], [PGP_KEY_1])  # no match: first rule


def test_creation_rules_accept_lists_and_refuse_key_groups(tmp_path: Path) -> None:
    (tmp_path / ".sops.yaml").write_text(f"creation_rules:\n  - age: [{FLUX_AGE}]\n")
    assert find_creation_recipients(tmp_path) == ([FLUX_AGE], [])
    (tmp_path / ".sops.yaml").write_text(f"creation_rules:\n  - key_groups:\n      - age: [{FLUX_AGE}]\n")
    with pytest.raises(KeyConfigError, match="key_groups"):
        find_creation_recipients(tmp_path / "x.yaml")


def test_missing_sops_yaml_is_a_config_error_with_a_hint(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError) as caught:
        find_creation_recipients(tmp_path / "x.yaml")
    assert ".sops.yaml" in str(caught.value) and caught.value.hint and "--age" in caught.value.hint
