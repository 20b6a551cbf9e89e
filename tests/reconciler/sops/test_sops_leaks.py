"""No plaintext and no ciphertext slice ever reaches an error message, for every corpus file.

Each positive file is broken three ways (no key, a tampered value, a forged MAC); every resulting
message, and the CLI's stderr for the same files, goes through the leak guard.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import pytest
from sops_corpus import CORPUS, KEYS, SopsLeakGuard, positive_records

from pgwarden.commands import sops as sops_command
from reconciler.sops import KeyRing, SopsError, decrypt_file

POSITIVE = positive_records()
# A value's ciphertext (not a comment's: a comment that does not decrypt is kept, as sops does).
_VALUE_DATA = re.compile(r"ENC\[AES256_GCM,data:([^,]+),iv:[^,]+,tag:[^,]+,type:(?!comment)")
_MAC = re.compile(r"mac\"?\s*[:=]\s*\"?ENC\[AES256_GCM,data:")
_ANY_DATA = re.compile(r"data:([A-Za-z0-9+/=]{8,})")


def broken_copies(record: dict[str, Any], tmp_path: Path) -> list[Path]:
    source = CORPUS / record["file"]
    text = source.read_text(encoding="utf-8")
    value = _VALUE_DATA.search(text)
    assert value, record["file"]
    data = value.group(1)
    tampered = text.replace(data, ("B" if data[0] == "A" else "A") + data[1:], 1)
    mac = _MAC.search(text)  # the first document's MAC is the one that counts
    assert mac, record["file"]
    at = mac.end()
    forged = text[:at] + ("B" if text[at] == "A" else "A") + text[at + 1 :]
    paths = []
    for name, content in (("tampered", tampered), ("forged-mac", forged)):
        path = tmp_path / name / source.name
        path.parent.mkdir(exist_ok=True)
        path.write_text(content, encoding="utf-8")
        paths.append(path)
    return [source, *paths]


def ciphertext_slices(path: Path) -> set[str]:
    return set(_ANY_DATA.findall(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("record", POSITIVE, ids=[r["file"] for r in POSITIVE])
def test_errors_never_carry_plaintext_or_ciphertext(
    record: dict[str, Any],
    tmp_path: Path,
    all_keys: KeyRing,
    no_keys: KeyRing,
    sops_leak_guard: SopsLeakGuard,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original, tampered, forged = broken_copies(record, tmp_path)
    attempts = [(original, no_keys), (tampered, all_keys), (forged, all_keys)]
    messages = []
    for path, keys in attempts:
        with pytest.raises(SopsError) as caught:
            decrypt_file(path, keys)
        messages += [str(caught.value), repr(caught.value), caught.value.hint or ""]
    for name in ("SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE", "GNUPGHOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    for path in (tampered, forged):
        args = argparse.Namespace(
            file=path,
            input_type=None,
            output_type=None,
            backend="native",
            age_key_file=[KEYS / "flux-age.txt", KEYS / "flux-age-global.txt"],
            pgp_key_file=None,
            gnupghome=all_keys.gnupghome,  # importing keys per run is covered in test_sops_cli and slow
        )
        assert sops_command.run(args) == 2
        out, err = capsys.readouterr()
        assert out == ""
        messages.append(err)
    sops_leak_guard.add(*messages)
    slices = ciphertext_slices(original)
    for message in messages:
        assert "ENC[AES256_GCM,data:" not in message
        assert not [s for s in slices if s in message], "a ciphertext slice leaked"
