"""The decrypt stage decrypts a file again only when its bytes or the keys changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyrage
import pytest

from reconciler import decrypt, load
from reconciler.errors import ManifestErrors
from reconciler.sops import KeyRing, encrypt_secret_manifest


@pytest.fixture
def identity() -> Any:
    return pyrage.x25519.Identity.generate()


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Files the stage really decrypted (a spy around the real sops decryption)."""
    seen: list[str] = []
    real = decrypt.decrypt_documents

    def spy(documents: Any, keys: KeyRing, *, file: str, format: str) -> Any:
        seen.append(file)
        return real(documents, keys, file=file, format=format)

    monkeypatch.setattr(decrypt, "decrypt_documents", spy)
    return seen


def write_secret(root: Path, name: str, value: str, identity: Any) -> None:
    (root / f"{name}.yaml").write_text(encrypt_secret_manifest(name, value, age_recipients=[str(identity.to_public())]))


# What the reconcile loop keeps between cycles.
PARSER = load.Parser()
DECRYPTOR = decrypt.Decryptor()


def values(root: Path, keys: KeyRing) -> dict[str, str]:
    documents = load.load_directory(root, parser=PARSER)
    return {d.name: d.body["data"]["value"] for d in DECRYPTOR.secrets(documents, keys)}


def test_unchanged_files_are_not_decrypted_again(tmp_path: Path, identity: Any, calls: list[str]) -> None:
    write_secret(tmp_path, "a", "first-a", identity)
    write_secret(tmp_path, "b", "first-b", identity)
    keys = KeyRing(age_identities=[identity])
    assert values(tmp_path, keys) == {"a": "first-a", "b": "first-b"}
    assert calls == ["a.yaml", "b.yaml"]
    assert values(tmp_path, keys) == {"a": "first-a", "b": "first-b"}
    assert calls == ["a.yaml", "b.yaml"]  # both from the last cycle
    write_secret(tmp_path, "b", "second-b", identity)
    assert values(tmp_path, keys) == {"a": "first-a", "b": "second-b"}
    assert calls == ["a.yaml", "b.yaml", "b.yaml"]


def test_other_keys_decrypt_again(tmp_path: Path, identity: Any, calls: list[str]) -> None:
    write_secret(tmp_path, "a", "value-a", identity)
    keys = KeyRing(age_identities=[identity])
    assert values(tmp_path, keys) == {"a": "value-a"}
    # A key ring without the recipient's key must fail, not be served the last plaintext.
    with pytest.raises(ManifestErrors) as info:
        values(tmp_path, KeyRing(age_identities=[pyrage.x25519.Identity.generate()]))
    assert "value-a" not in str(info.value)
    # The same ring object after its key was removed fails too.
    assert values(tmp_path, keys) == {"a": "value-a"}
    keys.age_identities.clear()
    with pytest.raises(ManifestErrors):
        values(tmp_path, keys)
    assert calls == ["a.yaml"] * 4  # each call decrypted: the keys differed from the last call's every time


def test_a_failed_file_is_tried_again(tmp_path: Path, identity: Any, calls: list[str]) -> None:
    write_secret(tmp_path, "a", "value-a", identity)
    with pytest.raises(ManifestErrors):
        values(tmp_path, KeyRing(age_identities=[pyrage.x25519.Identity.generate()]))
    assert values(tmp_path, KeyRing(age_identities=[identity])) == {"a": "value-a"}
    assert calls == ["a.yaml", "a.yaml"]
