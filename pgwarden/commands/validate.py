"""`pgwarden validate PATH`: check manifests offline, with no proxy and no decryption keys."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from pgwarden.output import error
from reconciler.errors import ConfigError, ManifestErrors
from reconciler.grant_checks import expired_grants
from reconciler.review import count_kinds, load_for_review

EXIT_OK, EXIT_FINDINGS, EXIT_COULD_NOT_RUN = 0, 1, 2

EPILOG = """\
example:
  $ pgwarden validate repo/
  repo/db.yaml, document 1, spec.dynamicConfig.rules[0].configName: no config named 'ful-access'
      (did you mean 'full-access'?)
  repo/pw.yaml, document 1, data: Secret pw in pw.yaml is not encrypted: encrypt it with `pgwarden
      secret create`
  HINT:  `pgwarden secret create pw -o FILE` writes it encrypted; plaintext Secrets are ...
  ✗ 2 problems in the manifests under repo
  $ echo $?
  1
  (each problem is one line; wrapped here to fit)

what is checked (one problem anywhere rejects the whole revision, as the reconciler would):
  - every document against the JSON Schema of its kind (schemas/*.schema.json)
  - references: every fromSecret, configName, parent and group names something that exists; no parent loops
  - unique names per kind; every CEL expression compiles
  - Secrets are sops-encrypted, with a MAC and an ENC[AES256_GCM,...] data.value; they are NOT
    decrypted, so no key is needed (run it in a pull request's CI)
  - grant windows (validFrom/validUntil) are RFC 3339 instants with a zone; a grant already expired
    is a warning (`warning: FILE, document N, FIELD: ...`), not a problem: the exit status stays 0

exit status:
  0  every document is valid
  1  problems found (each printed as FILE, document N, FIELD: message)
  2  could not run (PATH does not exist)
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `validate`."""
    p = subparsers.add_parser(
        "validate",
        help="check manifests offline (schemas, references, CEL, sops shape); no keys needed",
        description="Validate the manifests under PATH the way the reconciler would, without decrypting Secrets.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", type=Path, help="a directory of YAML/JSON manifests, or one file")
    add_plaintext_option(p)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format (default: text)")
    p.set_defaults(func=run_validate)


def add_plaintext_option(p: argparse.ArgumentParser) -> None:
    """`--allow-plaintext-secrets`, shared with `diff`."""
    p.add_argument(
        "--allow-plaintext-secrets",
        action="store_true",
        help="accept Secret manifests that are not sops-encrypted (local development directories only: "
        "never commit plaintext to Git). Their values are still never printed",
    )


def run_validate(args: argparse.Namespace) -> int:
    """Validate, print the result, return the exit status."""
    if not args.path.exists():
        error(f"no such file or directory: {args.path}", hint="give the directory that holds your manifests")
        return EXIT_COULD_NOT_RUN
    try:
        documents = load_for_review(args.path, allow_plaintext_secrets=args.allow_plaintext_secrets)
    except ManifestErrors as exc:
        if args.output == "json":
            problems = [_problem(args.path, e) for e in exc.errors]
            _print_json({"valid": False, "path": str(args.path), "problems": problems})
        else:
            print_problems(args.path, exc.errors, file=sys.stdout)
            print(f"✗ {count(len(exc.errors), 'problem')} in the manifests under {args.path}")
        return EXIT_FINDINGS
    kinds = count_kinds(documents)
    warnings = expired_grants(documents, datetime.datetime.now(datetime.UTC))
    if args.output == "json":
        _print_json({"valid": True, "path": str(args.path), "documents": len(documents), "kinds": kinds,
                     **({"warnings": [_problem(args.path, w) for w in warnings]} if warnings else {})})
    else:
        for line in problem_lines(args.path, warnings):
            print(f"warning: {line}")
        listed = ", ".join(f"{kind}: {n}" for kind, n in kinds.items())
        print(f"✓ {count(len(documents), 'document')} valid" + (f" ({listed})" if listed else "")
              + (f", {count(len(warnings), 'warning')}" if warnings else ""))
    return EXIT_OK


def print_problems(path: Path, problems: Sequence[ConfigError], *, file: TextIO) -> None:
    """One `FILE, document N, FIELD: message` line per problem, then each distinct hint once."""
    for line in problem_lines(path, problems):
        print(line, file=file)
    for hint in distinct_hints(problems):
        print(f"HINT:  {hint}", file=file)


def problem_lines(path: Path, problems: Sequence[ConfigError]) -> list[str]:
    """`FILE, document N, FIELD: message` for each problem."""
    return [f"{place(path, problem)}: {problem.message}" for problem in problems]


def distinct_hints(problems: Sequence[ConfigError]) -> list[str]:
    """Each hint once, in order: ten unencrypted Secrets need the advice only once."""
    return list(dict.fromkeys(p.hint for p in problems if p.hint))


def count(n: int, noun: str) -> str:
    """`1 problem`, `2 problems`."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def place(path: Path, problem: ConfigError) -> str:
    """The problem's place with the file shown as the user reaches it (`examples-repo/db.yaml, ...`)."""
    root = path.parent if path.is_file() else path
    shown = (root / problem.source.file).as_posix()
    parts = [shown] + ([f"document {problem.source.document}"] if problem.source.document is not None else [])
    if problem.source.path:
        parts.append(problem.source.path)
    return ", ".join(parts)


def _problem(path: Path, problem: ConfigError) -> dict[str, object]:
    root = path.parent if path.is_file() else path
    return {
        "file": (root / problem.source.file).as_posix(),
        "document": problem.source.document,
        "path": problem.source.path,
        "message": problem.message,
        "hint": problem.hint,
        "error": type(problem).__name__,
    }


def _print_json(value: object) -> None:
    json.dump(value, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
