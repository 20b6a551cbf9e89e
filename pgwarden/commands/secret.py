"""`pgwarden secret create NAME`: write a sops-encrypted Secret manifest, no Go sops binary needed."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import tempfile
from pathlib import Path

from pgwarden.commands.sops import EXIT_COULD_NOT_RUN, EXIT_OK
from pgwarden.output import error
from reconciler.sops import SopsError, encrypt_secret_manifest, find_creation_recipients

CREATE_EPILOG = """\
examples:
  # encrypt a password typed at the prompt, for the recipients in the nearest .sops.yaml
  pgwarden secret create db-admin -o examples-repo/secrets/db-admin.yaml

  # from a pipe, for one explicit age recipient, printed to stdout
  printf '%s' "$DB_PASSWORD" | pgwarden secret create db-admin \\
      --age age1l44xcng8dqj32nlv6d930qvvrny05hglzcv9qpc7kxjc6902ma4qufys29

The manifest is `kind: Secret`, `metadata.name`, `data.value`. Only `data` is encrypted
(encrypted_regex ^(data|stringData)$), so kind and metadata stay reviewable; the MAC covers all.
Real sops decrypts the result: sops decrypt FILE.

where the value comes from (exactly one):
  --value V       visible in shell history and `ps`; avoid it for real secrets
  --from-file F   the file's bytes as text, unchanged
  stdin           piped: one trailing newline is dropped; a terminal: prompted, not echoed

recipients: --age / --pgp if given, else the first matching creation rule of the nearest
.sops.yaml (searched from the -o file's folder, or the current folder, upward).

exit status:
  0  manifest written
  2  could not encrypt (no value, no recipients, unknown PGP key, unwritable file)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `secret` with its `create` subcommand."""
    parser = subparsers.add_parser(
        "secret",
        help="create sops-encrypted Secret manifests",
        description="Create Secret manifests encrypted with sops, natively (age via pyrage, PGP via gpg).",
        epilog="run 'pgwarden secret create --help' for an example",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="secret_command", metavar="COMMAND", required=True)
    create = commands.add_parser(
        "create",
        help="write a sops-encrypted Secret manifest",
        description="Encrypt a value into a pgwarden Secret manifest that sops and pgwarden can decrypt.",
        epilog=CREATE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    create.add_argument("name", metavar="NAME", help="metadata.name of the Secret")
    source = create.add_mutually_exclusive_group()
    source.add_argument("--value", metavar="V", help="the secret value (exposed in shell history and ps)")
    source.add_argument("--from-file", metavar="F", type=Path, help="read the value from this file")
    create.add_argument("-o", "--output", metavar="FILE", type=Path, help="write here (default: stdout)")
    create.add_argument("--age", metavar="RECIPIENT", action="append", help="age recipient (repeatable)")
    create.add_argument("--pgp", metavar="FINGERPRINT", action="append", help="PGP fingerprint (repeatable)")
    create.add_argument("--gnupghome", metavar="DIR", type=Path, help="GnuPG home with the PGP public keys")
    parser.set_defaults(func=run)
    create.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Encrypt and write the manifest; return the exit status."""
    try:
        value = _read_value(args)
        if args.age or args.pgp:
            age, pgp = list(args.age or ()), list(args.pgp or ())
        else:
            age, pgp = find_creation_recipients(args.output if args.output else Path.cwd())
        manifest = encrypt_secret_manifest(
            args.name, value, age_recipients=age, pgp_fingerprints=pgp, gnupghome=args.gnupghome
        )
    except SopsError as exc:
        error(str(exc), hint=exc.hint)
        return EXIT_COULD_NOT_RUN
    if args.output is None:
        sys.stdout.write(manifest)
        return EXIT_OK
    try:
        _write_atomically(args.output, manifest)
    except OSError as exc:
        error(f"{args.output}: cannot write ({exc.strerror})")
        return EXIT_COULD_NOT_RUN
    print(f"pgwarden: wrote {args.output} (data.value encrypted for {len(age) + len(pgp)} recipients)", file=sys.stderr)
    return EXIT_OK


def _read_value(args: argparse.Namespace) -> str:
    if args.value is not None:
        value = args.value
    elif args.from_file is not None:
        try:
            value = args.from_file.read_bytes().decode("utf-8")
        except OSError as exc:
            raise SopsError(f"cannot read the value ({exc.strerror})", file=str(args.from_file)) from None
        except UnicodeDecodeError:
            raise SopsError("the value file is not UTF-8 text", file=str(args.from_file)) from None
    elif sys.stdin.isatty():
        value = getpass.getpass(f"value for Secret {args.name} (not echoed): ")
    else:
        value = sys.stdin.read()
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
    if value == "":
        raise SopsError("the value is empty", hint="pass --value, --from-file, or pipe the value on stdin")
    return value


def _write_atomically(path: Path, text: str) -> None:
    # Only ciphertext is written; replace so a reader never sees half a manifest.
    descriptor, temporary = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        # mkstemp makes 0600; a manifest meant for git is ordinary ciphertext: keep the old mode or 0644.
        os.chmod(temporary, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
