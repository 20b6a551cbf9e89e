"""Commit signatures: a private GnuPG home holding only the trusted keys, and what `git log --format=%G?`
says about a commit. The source stage (source.py) asks git; this module owns the keyring."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

# `git log --format=%G?`. "U" is a good signature of unknown *validity*: gpg's web of trust has no say,
# because the private keyring holds nothing but the trusted keys.
_GOOD_SIGNATURE = {"G", "U"}
_SIGNATURE_PROBLEM = {
    "N": "it is not signed",
    "B": "its signature is bad",
    "E": "it is not signed by a trusted key",
    "X": "its signature has expired",
    "Y": "it is signed by an expired key",
    "R": "it is signed by a revoked key",
}


class KeyringError(Exception):
    """A trusted key cannot be read or imported. The source stage reports it as a (transient) SourceError."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def signature_problem(status: str) -> str | None:
    """Why a commit with this `%G?` status is refused, or None if its signature is good."""
    if status in _GOOD_SIGNATURE:
        return None
    return _SIGNATURE_PROBLEM.get(status, f"its signature cannot be checked ({status or '?'})")


class TrustedKeyring:
    """A private GNUPGHOME under `parent` holding only the trusted keys; rebuilt when a key file changes.
    Mutable on purpose: it remembers the home it built and the digest of the key files it came from."""

    def __init__(self, keys: Sequence[Path], parent: Path, *, timeout_s: float) -> None:
        self._keys = tuple(keys)
        self._parent = parent
        self._timeout_s = timeout_s
        self._built: tuple[str, Path] | None = None  # (digest of the key files, GNUPGHOME)

    def home(self) -> Path:
        """The GNUPGHOME to verify with. Raises KeyringError."""
        blobs: list[bytes] = []
        for path in self._keys:
            try:
                blobs.append(path.read_bytes())
            except OSError as exc:
                raise KeyringError(f"cannot read trusted key {path}: {exc.strerror}") from exc
        digest = hashlib.sha256(b"\0".join(blobs)).hexdigest()
        if self._built is not None and self._built[0] == digest and self._built[1].is_dir():
            return self._built[1]
        self._parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        home = Path(tempfile.mkdtemp(dir=self._parent, prefix="gnupg-"))
        # No agent: importing public keys and verifying need none, and it would outlive us.
        (home / "gpg.conf").write_text("no-autostart\n")
        for path in self._keys:
            try:
                done = subprocess.run(
                    ["gpg", "--batch", "--status-fd", "1", "--import", str(path)],
                    env={**os.environ, "GNUPGHOME": str(home)},
                    capture_output=True,
                    text=True,
                    timeout=self._timeout_s,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                shutil.rmtree(home, ignore_errors=True)
                raise KeyringError(
                    f"cannot import trusted key {path}: {type(exc).__name__}", hint="install gpg (GnuPG 2)"
                ) from exc
            # Not the exit status: gpg also fails when it cannot reach an agent (it asks one about secret
            # keys), which happens when the GNUPGHOME path is too long for a socket name.
            if "[GNUPG:] IMPORT_OK " not in done.stdout:
                shutil.rmtree(home, ignore_errors=True)
                raise KeyringError(
                    f"cannot import trusted key {path}: gpg found no valid OpenPGP public key",
                    hint="export it with `gpg --armor --export <fingerprint>`",
                )
        if self._built is not None:
            shutil.rmtree(self._built[1], ignore_errors=True)
        self._built = (digest, home)
        return home
