"""The private-key options of every command that decrypts sops files, and the KeyRing they open."""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.sops import KeyRing


def add_key_options(parser: argparse.ArgumentParser) -> None:
    """--age-key-file, --pgp-key-file, --gnupghome (SOPS_AGE_KEY_FILE / SOPS_AGE_KEY are read too)."""
    parser.add_argument(
        "--age-key-file", metavar="PATH", action="append", type=Path, default=[],
        help="age identity file (repeatable; also $SOPS_AGE_KEY_FILE, $SOPS_AGE_KEY). It holds a private key: "
             "keep it 0600 and out of Git",
    )
    parser.add_argument(
        "--pgp-key-file", metavar="PATH", action="append", type=Path, default=[],
        help="armored PGP secret key to import into a throwaway keyring (repeatable)",
    )
    parser.add_argument("--gnupghome", metavar="DIR", type=Path, help="GnuPG home holding the PGP secret key")


def load_keyring(args: argparse.Namespace, *, extra_age_key_files: list[Path] | None = None) -> KeyRing:
    """Keys from the command line plus the environment, as sops would find them."""
    return KeyRing.from_files(
        [*(args.age_key_file or ()), *(extra_age_key_files or ())], args.pgp_key_file or (),
        gnupghome=args.gnupghome, include_env=True,
    )
