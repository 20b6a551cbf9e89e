"""KeyRing: keys from files and from the environment as sops reads them; throwaway GNUPGHOMEs."""

from __future__ import annotations

from pathlib import Path

import pytest
from sops_corpus import CORPUS, KEYS

from reconciler.sops import KeyConfigError, KeyRing, decrypt_file


def age_identity(name: str) -> str:
    return next(line for line in (KEYS / name).read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1"))


def test_inline_sops_age_key_may_hold_several_identities(tmp_path: Path) -> None:
    inline = f"# a comment\n{age_identity('flux-age-global.txt')}\n\n{age_identity('flux-age.txt')}\n"
    ring = KeyRing.from_env({"SOPS_AGE_KEY": inline, "HOME": str(tmp_path)})
    assert len(ring.age_identities) == 2 and ring.gnupghome is None
    assert decrypt_file(CORPUS / "synthetic/shamir-2-of-2.yaml", ring) == {"db_password": "correct horse"}


def test_sops_age_key_file_and_the_default_keys_txt(tmp_path: Path) -> None:
    default = tmp_path / "config/sops/age/keys.txt"
    default.parent.mkdir(parents=True)
    default.write_text(age_identity("flux-age.txt") + "\n")
    env = {"SOPS_AGE_KEY_FILE": str(KEYS / "flux-age-global.txt"), "XDG_CONFIG_HOME": str(tmp_path / "config")}
    ring = KeyRing.from_env({**env, "HOME": str(tmp_path)})
    assert len(ring.age_identities) == 2


def test_gnupghome_from_env_or_default(tmp_path: Path) -> None:
    assert KeyRing.from_env({"GNUPGHOME": "/some/where", "HOME": str(tmp_path)}).gnupghome == Path("/some/where")
    (tmp_path / ".gnupg").mkdir()
    assert KeyRing.from_env({"HOME": str(tmp_path)}).gnupghome == tmp_path / ".gnupg"


def test_missing_sops_age_key_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError, match="SOPS_AGE_KEY_FILE"):
        KeyRing.from_env({"SOPS_AGE_KEY_FILE": str(tmp_path / "nope.txt"), "HOME": str(tmp_path)})


def test_a_malformed_identity_is_refused_without_echoing_it(tmp_path: Path) -> None:
    bad = "AGE-SECRET-KEY-1QQQQTYPOQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ"
    path = tmp_path / "keys.txt"
    path.write_text(f"# header\n{bad}\n")
    with pytest.raises(KeyConfigError) as caught:
        KeyRing.from_files([path])
    assert "line 2" in str(caught.value) and str(path) in str(caught.value)
    assert "QQQQ" not in str(caught.value)


def test_post_quantum_identities_are_recorded_as_unusable() -> None:
    ring = KeyRing.from_files([KEYS / "flux-age-pq.txt"])
    assert ring.age_identities == []
    assert "flux-age-pq.txt line 3: post-quantum age identity" in ring.describe_unusable()


def test_pgp_key_files_go_into_a_throwaway_home_that_close_removes() -> None:
    ring = KeyRing.from_files(pgp_key_files=[KEYS / "flux-pgp.asc"])
    home = ring.gnupghome
    assert home is not None and home.is_dir() and ring.owns_gnupghome
    assert (home.stat().st_mode & 0o777) == 0o700
    assert decrypt_file(CORPUS / "flux/algorithms/pgp.yaml", ring)["stringData"] == {"key": "value"}
    ring.close()
    ring.close()
    assert not home.exists()


def test_a_given_gnupghome_is_never_removed(tmp_path: Path) -> None:
    with KeyRing.from_files(gnupghome=tmp_path) as ring:
        assert ring.gnupghome == tmp_path and not ring.owns_gnupghome
    assert tmp_path.is_dir()


def test_gnupghome_and_pgp_key_files_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(KeyConfigError):
        KeyRing.from_files(pgp_key_files=[KEYS / "flux-pgp.asc"], gnupghome=tmp_path)


def test_repr_shows_counts_not_keys() -> None:
    ring = KeyRing.from_files([KEYS / "flux-age.txt"])
    assert "AGE-SECRET-KEY" not in repr(ring) and "age_identities=1" in repr(ring)
    assert ring.age_identity_texts() == [age_identity("flux-age.txt")]
