"""Every positive file of the shared sops corpus decrypts to exactly its expected/ plaintext."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML
from sops_corpus import CORPUS, expected_records, positive_records, tagged

from reconciler.sops import KeyRing, decrypt_bytes, decrypt_document, decrypt_documents, decrypt_file, detect_format
from reconciler.sops.cipher import Comment
from reconciler.sops.formats import parse_documents
from reconciler.sops.mac import MacHasher
from reconciler.sops.metadata import parse_metadata
from reconciler.sops.tree import Place, decrypt_tree

POSITIVE = positive_records()
YAML_OR_JSON = [r for r in POSITIVE if detect_format(r["file"]) in ("yaml", "json")]


def ids(records: list[dict[str, Any]]) -> list[str]:
    return [r["file"] for r in records]


HELPER_FILES = {
    "getsops/age/mock-encrypted-key.age",
    "getsops/functional-tests/res/comments.yaml",
    "getsops/functional-tests/res/comments_list.yaml",
    "getsops/functional-tests/res/plainfile.yaml",
}


def test_every_encrypted_corpus_file_has_an_expected_record() -> None:
    """A file added to the corpus without expected/ would silently escape these tests."""
    files = {
        p.relative_to(CORPUS).as_posix()
        for top in ("flux", "getsops", "synthetic")
        for p in (CORPUS / top).rglob("*")
        if p.is_file()
    }
    assert files - HELPER_FILES == {r["file"] for r in expected_records()}
    assert len(POSITIVE) == len(expected_records()) - 4  # age-pq, config example, no_mac, flux/inside


@pytest.mark.parametrize("record", POSITIVE, ids=ids(POSITIVE))
def test_positive_file_decrypts_to_expected_plaintext(record: dict[str, Any], all_keys: KeyRing) -> None:
    decrypted = decrypt_file(CORPUS / record["file"], all_keys)
    assert tagged(decrypted) == record["plaintext"]
    assert json.dumps(tagged(decrypted)) == json.dumps(record["plaintext"])  # same key order too


@pytest.mark.parametrize("record", POSITIVE, ids=ids(POSITIVE))
def test_mac_layer_matches_expected_with_the_recorded_data_key(record: dict[str, Any]) -> None:
    """The AES and MAC layers alone, with the data key from expected/ (no age, no gpg)."""
    text = (CORPUS / record["file"]).read_text(encoding="utf-8")
    documents = parse_documents(text, detect_format(record["file"]), file=record["file"])
    metadata = parse_metadata(documents[0]["sops"])
    hasher = MacHasher(mac_only_encrypted=metadata.mac_only_encrypted)
    for document in documents:
        body = {k: v for k, v in document.items() if k != "sops"}
        decrypt_tree(
            body,
            data_key=bytes.fromhex(record["data_key_hex"]),
            rule=metadata.rule,
            hasher=hasher,
            mac_only_encrypted=metadata.mac_only_encrypted,
            place=Place(),
        )
    assert hasher.hexdigest() == record["computed_mac"]


def test_no_mac_file_hashes_to_the_recorded_mac() -> None:
    record = json.loads((CORPUS / "expected/getsops/functional-tests/res/no_mac.yaml.json").read_text())
    test_mac_layer_matches_expected_with_the_recorded_data_key(record)


@pytest.mark.parametrize("loader", ["rt", "safe"])
@pytest.mark.parametrize("record", YAML_OR_JSON, ids=ids(YAML_OR_JSON))
def test_decrypt_document_accepts_ruamel_and_plain_trees(
    record: dict[str, Any], loader: str, all_keys: KeyRing
) -> None:
    """The reconciler's path: it parses the file itself and hands over the documents."""
    text = (CORPUS / record["file"]).read_text(encoding="utf-8")
    if detect_format(record["file"]) == "json":
        documents = [json.loads(text)]
    else:
        documents = list(YAML(typ=loader, pure=True).load_all(text))
    if len(documents) == 1:
        decrypted: Any = decrypt_document(documents[0], all_keys, file=record["file"])
        assert type(decrypted) is dict
    else:
        decrypted = decrypt_documents(documents, all_keys, file=record["file"])
    assert tagged(decrypted) == record["plaintext"]
    assert "sops" in documents[0], "the caller's tree must not be modified"


def test_nested_sops_document_inside_a_plain_secret(all_keys: KeyRing) -> None:
    """flux/inside: data.key is base64 of a sops binary/JSON document (Flux decrypts those)."""
    record = json.loads((CORPUS / "expected/flux/inside/secret.yaml.json").read_text())
    outer = YAML(typ="safe", pure=True).load((CORPUS / record["file"]).read_text())
    inner = base64.b64decode(outer["data"]["key"])
    decrypted = decrypt_bytes(inner, all_keys, file=f"{record['file']}#data.key", input_type="json")
    assert decrypted == record["inner_plaintext"]


def test_age_armor_blob_from_getsops_opens_with_the_mock_identity() -> None:
    import pyrage

    ring = KeyRing()
    ring.add_age_identities((CORPUS / "keys/getsops-age-mock-identity.txt").read_text(), source="mock")
    assert pyrage.decrypt((CORPUS / "getsops/age/mock-encrypted-key.age").read_bytes(), ring.age_identities) == b"data"


def test_comments_decrypt_with_the_enclosing_mapping_path(all_keys: KeyRing) -> None:
    from reconciler.sops import render

    tree = decrypt_file(CORPUS / "getsops/example.yaml", all_keys, keep_comments=True)
    text = render(tree, "yaml")
    assert "# private key for secret operations in app2" in text
    assert "ENC[" not in text
    plain = (CORPUS / "getsops/functional-tests/res/comments.yaml").read_text()
    encrypted = render(
        decrypt_file(CORPUS / "getsops/functional-tests/res/comments.enc.yaml", all_keys, keep_comments=True), "yaml"
    )
    for line in ("# first comment in file", "# this-is-a-comment"):
        assert line in plain and line in encrypted


def test_ini_and_dotenv_comments_are_kept_when_asked(all_keys: KeyRing) -> None:
    tree = decrypt_file(CORPUS / "getsops/example.ini", all_keys, keep_comments=True)
    comments = [v for section in tree.values() for v in section.values() if isinstance(v, Comment)]
    assert [c.text for c in comments] == ["An example file for use with sops!"]


@pytest.mark.parametrize("record", POSITIVE, ids=ids(POSITIVE))
def test_output_renders_in_the_input_format(record: dict[str, Any], all_keys: KeyRing, tmp_path: Path) -> None:
    from reconciler.sops import render

    kind = detect_format(record["file"])
    text = render(decrypt_file(CORPUS / record["file"], all_keys, keep_comments=True), kind)
    reparsed = text if kind == "binary" else parse_documents(text, kind, file="rendered")
    if kind == "binary":
        assert text == record["plaintext"]["data"]
    elif kind in ("dotenv", "ini"):
        assert reparsed[0] == record["plaintext"] or _without_comments(reparsed[0]) == record["plaintext"]
    else:
        plain = reparsed if len(reparsed) > 1 else reparsed[0]
        assert tagged(plain) == record["plaintext"]


def _without_comments(tree: Any) -> Any:
    from reconciler.sops.tree import strip_comments

    return strip_comments(tree)
