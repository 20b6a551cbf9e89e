"""The `gpg` binary as a PGP backend: ciphertext or the data key travel on pipes, never through files.

`--status-fd 2` gives machine-readable reasons (`NO_SECKEY`, `INV_RECP`), independent of the locale.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from reconciler.sops.errors import KeyConfigError

_TIMEOUT_S = 60


class GpgFailed(Exception):
    """Internal: one gpg call failed; `reason` is safe to show (no key material, no data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def gpg_binary() -> str | None:
    """The gpg executable: $SOPS_GPG_EXEC as in sops, else `gpg` on PATH."""
    configured = os.environ.get("SOPS_GPG_EXEC")
    return shutil.which(configured) if configured else shutil.which("gpg")


def make_throwaway_home() -> Path:
    """A private GNUPGHOME (mode 0700) for imported test or deploy keys."""
    return Path(tempfile.mkdtemp(prefix="pgwarden-gnupg-"))


def remove_throwaway_home(home: Path) -> None:
    """Stop the gpg-agent that gpg started for `home`, then delete the directory."""
    gpgconf = shutil.which("gpgconf")
    if gpgconf and home.is_dir():
        subprocess.run(
            [gpgconf, "--homedir", str(home), "--kill", "all"],
            capture_output=True,
            timeout=_TIMEOUT_S,
            check=False,
        )
    shutil.rmtree(home, ignore_errors=True)


def import_key_file(home: Path, key_file: Path) -> None:
    """Import an armored (secret or public) key file into `home`."""
    try:
        _run(home, ["--import", str(key_file)], stdin=b"", throwaway=True, expect_output=False)
    except GpgFailed as exc:
        raise KeyConfigError(f"gpg could not import the key: {exc.reason}", file=str(key_file)) from None


def decrypt(home: Path | None, armored: str, *, throwaway: bool) -> bytes:
    """Decrypt one armored OpenPGP message to the bytes it holds (a data key or a Shamir share)."""
    return _run(home, ["--decrypt"], stdin=armored.encode(), throwaway=throwaway)


def encrypt(home: Path | None, fingerprint: str, plaintext: bytes) -> str:
    """Encrypt `plaintext` for one fingerprint whose public key is in `home`; armored output."""
    args = ["--trust-model", "always", "--armor", "--encrypt", "--recipient", fingerprint]
    return _run(home, args, stdin=plaintext, throwaway=False).decode("ascii")


def _run(home: Path | None, args: list[str], *, stdin: bytes, throwaway: bool, expect_output: bool = True) -> bytes:
    binary = gpg_binary()
    if binary is None:
        raise GpgFailed("the gpg executable was not found (install GnuPG or set SOPS_GPG_EXEC)")
    command = [binary, "--batch", "--no-tty", "--quiet", "--status-fd", "2"]
    if home is not None:
        command += ["--homedir", str(home)]
    if throwaway:
        # Nobody can answer a pinentry for a throwaway keyring: fail fast on passphrase keys.
        command += ["--pinentry-mode", "loopback"]
    env = {**os.environ, "LC_ALL": "C"}
    try:
        done = subprocess.run(
            command + args, input=stdin, capture_output=True, timeout=_TIMEOUT_S, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise GpgFailed(f"gpg did not finish within {_TIMEOUT_S} s (waiting for a passphrase?)") from None
    if done.returncode == 0 and (done.stdout or not expect_output):
        return done.stdout
    raise GpgFailed(_explain(done.stderr.decode(errors="replace"), done.returncode))


def _explain(stderr: str, returncode: int) -> str:
    status = {line.split()[1] for line in stderr.splitlines() if line.startswith("[GNUPG:] ") and " " in line}
    if "DECRYPTION_OKAY" in status:
        return "gpg decrypted nothing (an OpenPGP packet type it does not support?)"
    if "NO_SECKEY" in status or "No secret key" in stderr:
        return "no secret key for it in the keyring"
    if status & {"BAD_PASSPHRASE", "MISSING_PASSPHRASE", "PINENTRY_LAUNCHED"}:
        return "the secret key needs a passphrase, which cannot be entered here"
    if "INV_RECP" in status or "NO_PUBKEY" in status:
        return "no usable public key for it in the keyring (import it with gpg --import)"
    if "NODATA" in status:
        return "not an OpenPGP message"
    if status & {"DECRYPTION_FAILED", "ERROR", "FAILURE"}:
        return "gpg could not decrypt it"
    return f"gpg exited with status {returncode}"
