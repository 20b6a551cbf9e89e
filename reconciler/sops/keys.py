"""Private keys that open sops data keys: age identities (pyrage) and a GNUPGHOME for `gpg`.

Identities come from configuration (key files) or from the environment as sops reads it:
SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, `$XDG_CONFIG_HOME/sops/age/keys.txt`, and GNUPGHOME
(not SOPS_AGE_KEY_CMD, which would run a command; an OpenSSH key file works as an age key file).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any, Self

import pyrage
from pyrage import ssh, x25519

import reconciler.sops.gpg as gpg
from reconciler.sops.errors import KeyConfigError

PYRAGE_VERSION = version("pyrage")


@dataclass(frozen=True, slots=True, kw_only=True)
class UnusableIdentity:
    """An identity we read but cannot use, kept so that decryption errors can say why."""

    source: str
    line: int
    kind: str


class KeyRing:
    """The private keys of one run.

    Mutable on purpose: it may own a throwaway GNUPGHOME, which `close()` (or the `with` block, or
    garbage collection) deletes after stopping its gpg-agent. `repr()` shows counts, never keys.
    """

    def __init__(
        self,
        *,
        age_identities: Iterable[Any] = (),
        age_identity_texts: Iterable[str] = (),
        unusable_identities: Iterable[UnusableIdentity] = (),
        gnupghome: Path | None = None,
        owns_gnupghome: bool = False,
    ) -> None:
        self.age_identities: list[Any] = list(age_identities)
        self.unusable_identities: list[UnusableIdentity] = list(unusable_identities)
        self.gnupghome = gnupghome
        self.owns_gnupghome = owns_gnupghome
        # Kept only for the Go sops backend, which reads identities from SOPS_AGE_KEY.
        self._age_identity_texts = list(age_identity_texts)
        self._cleanup = (
            weakref.finalize(self, gpg.remove_throwaway_home, gnupghome)
            if owns_gnupghome and gnupghome is not None
            else None
        )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Keys from SOPS_AGE_KEY_FILE, SOPS_AGE_KEY, the default age keys.txt and GNUPGHOME."""
        env = os.environ if environ is None else environ
        ring = cls()
        ring._add_env_age_keys(env)
        ring.gnupghome = _env_gnupghome(env)
        return ring

    @classmethod
    def from_files(
        cls,
        age_key_files: Iterable[Path | str] = (),
        pgp_key_files: Iterable[Path | str] = (),
        *,
        gnupghome: Path | None = None,
        include_env: bool = False,
        environ: Mapping[str, str] | None = None,
    ) -> Self:
        """Keys from files; armored PGP keys go into a throwaway GNUPGHOME that `close()` removes.

        With `include_env`, the environment's keys (as in `from_env`) are added too; an explicit
        `gnupghome` or PGP key file wins over GNUPGHOME.
        """
        env = os.environ if environ is None else environ
        pgp_files = [Path(p) for p in pgp_key_files]
        if pgp_files and gnupghome is not None:
            raise KeyConfigError("use either a GNUPGHOME or PGP key files to import, not both")
        ring = cls()
        for path in age_key_files:
            ring._add_age_file(Path(path))
        if include_env:
            ring._add_env_age_keys(env)
        if pgp_files:
            home = gpg.make_throwaway_home()
            ring.gnupghome, ring.owns_gnupghome = home, True
            ring._cleanup = weakref.finalize(ring, gpg.remove_throwaway_home, home)
            for path in pgp_files:
                if not path.is_file():
                    raise KeyConfigError("PGP key file not found", file=str(path))
                gpg.import_key_file(home, path)
        elif gnupghome is not None:
            ring.gnupghome = Path(gnupghome)
        elif include_env:
            ring.gnupghome = _env_gnupghome(env)
        return ring

    def add_age_identities(self, text: str, *, source: str) -> None:
        """Parse an age identity file's text (several identities and comments allowed)."""
        for number, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-----BEGIN OPENSSH PRIVATE KEY-----"):
                self._add_ssh_identity(text, source)
                return
            if line.startswith("AGE-SECRET-KEY-PQ-"):
                kind = "post-quantum age identity (AGE-SECRET-KEY-PQ-1…)"
                self.unusable_identities.append(UnusableIdentity(source=source, line=number, kind=kind))
                continue
            if line.startswith("AGE-PLUGIN-"):
                kind = "age plugin identity (AGE-PLUGIN-…)"
                self.unusable_identities.append(UnusableIdentity(source=source, line=number, kind=kind))
                continue
            try:
                self.age_identities.append(x25519.Identity.from_str(line))
            except pyrage.IdentityError:
                # Never echo the line: it may be a private key with a typo.
                raise KeyConfigError(
                    f"line {number} is not an age identity (expected AGE-SECRET-KEY-1…)", file=source
                ) from None
            self._age_identity_texts.append(line)

    def age_identity_texts(self) -> list[str]:
        """The identities as text, for handing to a `sops` child process via SOPS_AGE_KEY."""
        return list(self._age_identity_texts)

    def describe_unusable(self) -> str:
        """`keys.txt line 3: post-quantum age identity …`, for key-slot failure messages."""
        return "; ".join(
            f"{u.source} line {u.line}: {u.kind} cannot be read by pyrage {PYRAGE_VERSION}"
            for u in self.unusable_identities
        )

    def close(self) -> None:
        """Remove a throwaway GNUPGHOME (and stop its gpg-agent); safe to call twice."""
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"KeyRing(age_identities={len(self.age_identities)}, "
            f"unusable={len(self.unusable_identities)}, gnupghome={self.gnupghome})"
        )

    def _add_age_file(self, path: Path) -> None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise KeyConfigError(f"cannot read age key file ({reason})", file=str(path)) from None
        self.add_age_identities(text, source=str(path))

    def _add_ssh_identity(self, text: str, source: str) -> None:
        try:
            self.age_identities.append(ssh.Identity.from_buffer(text.encode()))
        except pyrage.IdentityError:
            raise KeyConfigError("not an unencrypted OpenSSH private key", file=source) from None

    def _add_env_age_keys(self, env: Mapping[str, str]) -> None:
        if env.get("SOPS_AGE_KEY_FILE"):
            path = Path(env["SOPS_AGE_KEY_FILE"]).expanduser()
            if not path.is_file():
                raise KeyConfigError("SOPS_AGE_KEY_FILE names a file that does not exist", file=str(path))
            self._add_age_file(path)
        if env.get("SOPS_AGE_KEY"):
            self.add_age_identities(env["SOPS_AGE_KEY"], source="SOPS_AGE_KEY")
        config_home = Path(env.get("XDG_CONFIG_HOME") or Path(env.get("HOME", "~")) / ".config")
        default_file = config_home.expanduser() / "sops" / "age" / "keys.txt"
        if default_file.is_file():
            self._add_age_file(default_file)


def _env_gnupghome(env: Mapping[str, str]) -> Path | None:
    if env.get("GNUPGHOME"):
        return Path(env["GNUPGHOME"]).expanduser()
    default = Path(env.get("HOME", "~")).expanduser() / ".gnupg"
    return default if default.is_dir() else None
