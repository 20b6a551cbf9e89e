"""`pgwarden sops decrypt` and `pgwarden secret create`, run in-process through their register() hooks."""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path

import pytest
from sops_corpus import CORPUS, FLUX_AGE, KEYS, SopsLeakGuard

from pgwarden.commands import secret, sops
from reconciler.sops import KeyRing, decrypt_file


def pgwarden(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgwarden")
    commands = parser.add_subparsers(dest="command", required=True)
    sops.register(commands)
    secret.register(commands)
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No key of the developer's own machine may take part."""
    for name in ("SOPS_AGE_KEY", "SOPS_AGE_KEY_FILE", "GNUPGHOME", "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def test_decrypt_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    pgp = str(KEYS / "getsops-pgp-functional-tests.asc")
    assert (
        pgwarden(
            ["sops", "decrypt", "--pgp-key-file", pgp, "--output-type", "json", str(CORPUS / "getsops/example.json")]
        )
        == 0
    )
    expected = json.loads((CORPUS / "expected/getsops/example.json.json").read_text())["plaintext"]
    printed = json.loads(capsys.readouterr().out)
    assert printed["firstName"] == expected["firstName"] and printed["age"] == 25.4


def test_decrypt_defaults_to_the_input_format_and_reads_sops_age_key_file(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOPS_AGE_KEY_FILE", str(KEYS / "flux-age.txt"))
    assert pgwarden(["sops", "decrypt", str(CORPUS / "flux/envs/env.env")]) == 0
    assert capsys.readouterr().out == "key=value\n"
    assert pgwarden(["sops", "decrypt", "--output-type", "yaml", str(CORPUS / "synthetic/multidoc.yaml")]) == 0
    assert capsys.readouterr().out.count("---") == 1


def test_decrypt_binary_prints_the_raw_data(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        pgwarden(["sops", "decrypt", "--age-key-file", str(KEYS / "flux-age.txt"), str(CORPUS / "flux/files/file.txt")])
        == 0
    )
    assert capsys.readouterr().out == "value"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (
            ["getsops/functional-tests/res/no_mac.yaml", "--pgp-key-file", "keys/getsops-pgp-functional-tests.asc"],
            "no MAC",
        ),
        (["synthetic/types.yaml"], "no key could decrypt the data key"),
        (["getsops/functional-tests/res/plainfile.yaml"], "not encrypted with sops"),
        (["flux/algorithms/age-pq.yaml", "--age-key-file", "keys/flux-age-pq.txt"], "post-quantum"),
        (["synthetic/missing.yaml"], "cannot read the file"),
    ],
)
def test_failures_exit_2_in_libpq_style(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str], sops_leak_guard: SopsLeakGuard
) -> None:
    resolved = [str(CORPUS / a) if "/" in a else a for a in argv]
    assert pgwarden(["sops", "decrypt", *resolved]) == 2
    out, err = capsys.readouterr()
    sops_leak_guard.add(out, err)
    assert out == ""
    assert err.startswith("pgwarden: error: ") and fragment in err
    if "cannot read" not in fragment:
        assert "\nHINT:  " in err


def test_go_backend_without_the_binary_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no sops on it
    assert pgwarden(["sops", "decrypt", "--backend", "go", str(CORPUS / "synthetic/types.yaml")]) == 2
    assert "Go sops binary is not on PATH" in capsys.readouterr().err


def test_go_backend_matches_native(capsys: pytest.CaptureFixture[str]) -> None:
    assert shutil.which("sops"), "the Go sops binary is not on PATH: run `bash tests/run.sh`"
    argv = ["sops", "decrypt", "--age-key-file", str(KEYS / "flux-age.txt"), "--output-type", "json"]
    assert pgwarden([*argv, "--backend", "go", str(CORPUS / "synthetic/encrypted-regex.yaml")]) == 0
    go = json.loads(capsys.readouterr().out)
    assert pgwarden([*argv, str(CORPUS / "synthetic/encrypted-regex.yaml")]) == 0
    assert json.loads(capsys.readouterr().out) == go


def test_help_teaches_with_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["sops", "decrypt", "--help"], ["secret", "create", "--help"]):
        with pytest.raises(SystemExit):
            pgwarden(argv)
        text = capsys.readouterr().out
        assert "examples:" in text and "exit status:" in text and "pgwarden " in text


def test_secret_create_with_value_prints_a_decryptable_manifest(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flux_age_keys: KeyRing
) -> None:
    assert pgwarden(["secret", "create", "db-admin", "--value", "pw-from-flag", "--age", FLUX_AGE]) == 0
    path = tmp_path / "out.yaml"
    path.write_text(capsys.readouterr().out)
    assert decrypt_file(path, flux_age_keys)["data"] == {"value": "pw-from-flag"}


def test_secret_create_from_stdin_drops_one_newline_and_uses_sops_yaml(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    flux_age_keys: KeyRing,
    sops_leak_guard: SopsLeakGuard,
) -> None:
    (tmp_path / ".sops.yaml").write_text(f"creation_rules:\n  - path_regex: secrets/\n    age: {FLUX_AGE}\n")
    (tmp_path / "secrets").mkdir()
    monkeypatch.setattr("sys.stdin", io.StringIO("pw-from-stdin\n"))
    target = tmp_path / "secrets" / "db.yaml"
    assert pgwarden(["secret", "create", "db-admin", "-o", str(target)]) == 0
    out, err = capsys.readouterr()
    sops_leak_guard.add(out, err)
    assert out == "" and "wrote" in err
    assert (target.stat().st_mode & 0o777) == 0o644
    assert "pw-from-stdin" not in target.read_text()
    assert decrypt_file(target, flux_age_keys)["data"] == {"value": "pw-from-stdin"}


def test_secret_create_from_file_keeps_the_bytes(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flux_age_keys: KeyRing
) -> None:
    source = tmp_path / "value.txt"
    source.write_text("pw-from-file\n")
    target = tmp_path / "s.yaml"
    assert pgwarden(["secret", "create", "n", "--from-file", str(source), "--age", FLUX_AGE, "-o", str(target)]) == 0
    assert decrypt_file(target, flux_age_keys)["data"] == {"value": "pw-from-file\n"}


def test_secret_create_failures_exit_2(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sops_leak_guard: SopsLeakGuard
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.stdin", io.StringIO("pw-never-shown\n"))
    assert pgwarden(["secret", "create", "n"]) == 2  # no .sops.yaml, no --age
    err = capsys.readouterr().err
    sops_leak_guard.add(err)
    assert "no .sops.yaml" in err and "HINT:  pass --age" in err and "pw-never-shown" not in err
    assert pgwarden(["secret", "create", "n", "--value", "", "--age", FLUX_AGE]) == 2
    assert "empty" in capsys.readouterr().err


def test_command_without_subcommand_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        pgwarden(["sops"])
    assert caught.value.code == 2
