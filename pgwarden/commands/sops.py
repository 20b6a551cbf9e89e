"""`pgwarden sops decrypt FILE`: print a sops-encrypted file decrypted, like `sops decrypt`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgwarden.keys import add_key_options, load_keyring
from pgwarden.output import error
from reconciler.sops import INPUT_TYPES, OUTPUT_TYPES, SopsError, decrypt_file, detect_format, render
from reconciler.sops.decrypt import read_limited
from reconciler.sops.gobackend import decrypt_with_go_sops, sops_binary

EXIT_OK, EXIT_COULD_NOT_RUN = 0, 2

KEY_OPTIONS_HELP = """\
keys (age slots are tried first, then PGP):
  age  --age-key-file PATH (repeatable), plus SOPS_AGE_KEY_FILE, SOPS_AGE_KEY and
       ~/.config/sops/age/keys.txt when they exist
  PGP  --pgp-key-file PATH (armored secret key, imported into a throwaway keyring that is
       deleted on exit), or --gnupghome DIR, else GNUPGHOME or ~/.gnupg
"""

DECRYPT_EPILOG = f"""\
examples:
  # print a Secret manifest decrypted, with the age key in SOPS_AGE_KEY_FILE
  SOPS_AGE_KEY_FILE=~/.config/pgwarden/age.txt pgwarden sops decrypt examples-repo/secrets/db.yaml

  # as JSON, with a PGP key that is not in any keyring
  pgwarden sops decrypt --pgp-key-file deploy-key.asc --output-type json secrets/app.enc.json

{KEY_OPTIONS_HELP}
The MAC is always verified: a file edited after it was encrypted is refused.
The plaintext goes to stdout only; errors never show a value.

exit status:
  0  decrypted and printed
  2  could not decrypt (not a sops file, no matching key, MAC mismatch, malformed file)
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `sops` with its `decrypt` subcommand."""
    parser = subparsers.add_parser(
        "sops",
        help="work with sops-encrypted files (natively, no Go binary needed)",
        description="Work with sops-encrypted files. Decryption is native: age via pyrage, PGP via gpg.",
        epilog="run 'pgwarden sops decrypt --help' for an example",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="sops_command", metavar="COMMAND", required=True)
    decrypt = commands.add_parser(
        "decrypt",
        help="print a sops-encrypted file decrypted",
        description="Decrypt a sops file (YAML, JSON, dotenv, INI or binary) and print the plaintext.",
        epilog=DECRYPT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    decrypt.add_argument("file", metavar="FILE", type=Path, help="the encrypted file")
    decrypt.add_argument(
        "--input-type", choices=INPUT_TYPES, help="file format (default: from the extension; else binary)"
    )
    decrypt.add_argument("--output-type", choices=OUTPUT_TYPES, help="output format (default: the input format)")
    decrypt.add_argument(
        "--backend",
        choices=("native", "go"),
        default="native",
        help="'go' runs the Go sops binary instead, through pipes (default: native)",
    )
    add_key_options(decrypt)
    parser.set_defaults(func=run)
    decrypt.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Decrypt and print; return the exit status."""
    input_type = args.input_type or detect_format(args.file.name)
    output_type = args.output_type or input_type
    try:
        with load_keyring(args) as keys:
            if args.backend == "go":
                if sops_binary() is None:
                    error("the Go sops binary is not on PATH", hint="install sops, or drop --backend go")
                    return EXIT_COULD_NOT_RUN
                text = decrypt_with_go_sops(
                    read_limited(args.file),
                    input_type=input_type,
                    output_type=output_type,
                    keys=keys,
                    file=str(args.file),
                )
            else:
                tree = decrypt_file(args.file, keys, input_type=input_type, keep_comments=True)
                text = render(tree, output_type)
    except SopsError as exc:
        error(str(exc), hint=exc.hint)
        return EXIT_COULD_NOT_RUN
    except Exception as exc:  # a library's message could quote a value: name the type only
        error(f"{args.file}: unexpected {type(exc).__name__} while decrypting")
        return EXIT_COULD_NOT_RUN
    sys.stdout.write(text)
    sys.stdout.flush()
    return EXIT_OK
