"""Optional backend: decrypt through the Go `sops` binary, ciphertext in on stdin, plaintext out on stdout.

Go sops' own messages can quote values (fluxcd/kustomize-controller#1371), so its stderr is never
passed on, except for key-retrieval failures, which list recipients only.
"""

from __future__ import annotations

import os
import shutil
import subprocess

from reconciler.sops.errors import BackendError, MacMismatch, SopsDecryptionError
from reconciler.sops.keys import KeyRing

_TIMEOUT_S = 120
# cmd/sops/codes/codes.go
_EXIT_MAC_MISMATCH, _EXIT_MAC_NOT_FOUND, _EXIT_COULD_NOT_RETRIEVE_KEY = 51, 52, 128
_EXIT_DECRYPTING = {24: "the MAC could not be decrypted", 25: "a value could not be decrypted"}


def sops_binary() -> str | None:
    """Path of a Go `sops` executable on PATH, if any."""
    return shutil.which("sops")


def decrypt_with_go_sops(
    data: bytes,
    *,
    input_type: str,
    output_type: str,
    keys: KeyRing | None = None,
    file: str | None = None,
    binary: str | None = None,
) -> str:
    """Run `sops decrypt` on `data` (stdin) and return its stdout; keys are passed in the environment."""
    executable = binary or sops_binary()
    if executable is None:
        raise BackendError("the Go sops binary is not on PATH", file=file, hint="use the native backend")
    env = dict(os.environ)
    if keys is not None:
        identities = keys.age_identity_texts()
        if identities:
            env["SOPS_AGE_KEY"] = "\n".join(identities)
        if keys.gnupghome is not None:
            env["GNUPGHOME"] = str(keys.gnupghome)
    command = [executable, "decrypt", "--input-type", input_type, "--output-type", output_type]
    try:
        done = subprocess.run(command, input=data, capture_output=True, timeout=_TIMEOUT_S, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackendError(f"could not run sops ({type(exc).__name__})", file=file) from None
    if done.returncode == 0:
        return done.stdout.decode("utf-8", errors="replace")
    code = done.returncode
    if code in (_EXIT_MAC_MISMATCH, _EXIT_MAC_NOT_FOUND):
        raise MacMismatch(f"sops reports a MAC problem (exit {code})", file=file, key_path="sops.mac")
    if code == _EXIT_COULD_NOT_RETRIEVE_KEY:
        detail = done.stderr.decode("utf-8", errors="replace").strip()[:2000]
        raise SopsDecryptionError(f"sops could not retrieve the data key:\n{detail}", file=file, key_path="sops")
    if code in _EXIT_DECRYPTING:
        raise SopsDecryptionError(f"sops: {_EXIT_DECRYPTING[code]} (exit {code})", file=file)
    raise BackendError(f"sops exited with status {code}", file=file)
