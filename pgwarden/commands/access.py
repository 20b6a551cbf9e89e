"""`pgwarden access PATH`: who can connect to which Service as which role, and run which statements; offline."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgwarden.commands.validate import add_plaintext_option, count, distinct_hints, problem_lines
from pgwarden.output import error
from proxy.errors import PgwardenError
from reconciler.access import AccessMatrix, access_matrix, keyless_snapshot
from reconciler.access_report import render_markdown, render_text, to_json
from reconciler.errors import ManifestErrors
from reconciler.review import load_for_review

EXIT_OK, EXIT_COULD_NOT_RUN = 0, 2

EPILOG = """\
example: what bob may do on my-db
  $ pgwarden access --user bob --service my-db examples-repo/
  bob · my-db · connects as read_only (config read-only, database my_db; rule everyone-else (configName read-only))
      read           ALLOW (not checked per statement (authorization mode NONE))
      write          ALLOW (not checked per statement (authorization mode NONE))
      ...

a conditional answer names what it depends on (from docs/policies/ with a user `ada`):
  ada · production · connects as shop_owner (config default, database shop; default config; ...)
      DDL            CONDITIONAL: needs AAL2 (at AAL1: DENY (ddl-needs-passkey/ddl-without-aal2))
      DROP/TRUNCATE  CONDITIONAL: at AAL1: DENY (ddl-needs-passkey/ddl-without-aal2) ...; at AAL2: ALLOW
                     (production-default/everything-else) Tue/Thu 09:00–11:00 Europe/Berlin, else DENY
                     (no-drop-outside-change-window/drop-outside-window)

how it is decided: the repository is validated and built as the reconciler builds it, with every Secret
replaced by a placeholder (no keys are needed and no secret value is read). Each User × Service is then
decided by the proxy's own routing (rules in order, first match wins) and policy engine, connecting with
dbname=SERVICE, for one statement per class plus variants (read: SELECT of an unqualified and of a
schema-qualified table; write: INSERT, UPDATE, DELETE, MERGE; DDL: CREATE TABLE, ALTER TABLE;
DROP/TRUNCATE; COPY FROM STDIN; COPY TO STDOUT; a FunctionCall message). Everything is decided under
an AAL1 token session, an AAL2 passkey login (AAL2) and an AAL2 login by TOTP (AAL2-totp), and,
when a rule reads the clock, at half past every hour of the current week in the time zone the
Policies name. Where the answers differ the cell is
CONDITIONAL and says on what: the session (`needs AAL2`), the statement text, or the weekday and hour
ranges (`Tue/Thu 09:00–11:00 Europe/Berlin`) where the outcome differs from the rest of the week.

exit status:
  0  the matrix was printed
  2  could not run: PATH missing or invalid (as `pgwarden validate` reports), an unknown --user/--service
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `access`."""
    p = subparsers.add_parser(
        "access",
        help="show who can connect where, as which role, and which statement classes they may run (offline)",
        description="Print the effective-access matrix of the manifests under PATH: User × Service, offline.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", type=Path, nargs="?", default=Path("."),
                   help="a directory of YAML/JSON manifests, or one file (default: .)")
    p.add_argument("--user", action="append", metavar="U", help="only this User (repeatable)")
    p.add_argument("--service", action="append", metavar="S", help="only this Service (repeatable)")
    p.add_argument("-o", "--output", choices=("text", "json", "markdown"), default="text",
                   help="text (default), json, or markdown for a pull-request comment")
    add_plaintext_option(p)
    p.set_defaults(func=run_access)


def load_matrix(path: Path, *, allow_plaintext_secrets: bool, users: list[str] | None = None,
                services: list[str] | None = None) -> AccessMatrix | None:
    """The matrix of PATH, or None after printing why it cannot be computed."""
    if not path.exists():
        error(f"no such file or directory: {path}", hint="give the directory that holds your manifests")
        return None
    try:
        documents = load_for_review(path, allow_plaintext_secrets=allow_plaintext_secrets)
        snapshot = keyless_snapshot(documents, source=str(path))
    except ManifestErrors as exc:
        error(f"the manifests under {path} are not valid ({count(len(exc.errors), 'problem')})",
              detail="\n".join(problem_lines(path, exc.errors)),
              hint="\n".join([*distinct_hints(exc.errors), f"`pgwarden validate {path}` lists the same problems"]))
        return None
    for kind, wanted, known in (("user", users, snapshot.users), ("service", services, snapshot.services)):
        for name in wanted or ():
            if name not in known:
                error(f'no {kind} named "{name}" in {path}', hint=f"known: {', '.join(sorted(known)) or 'none'}")
                return None
    try:
        return access_matrix(snapshot, users=users, services=services)
    except PgwardenError as exc:
        error(f"cannot decide access for {path}: {exc.message}", detail=exc.detail, hint=exc.hint)
        return None


def run_access(args: argparse.Namespace) -> int:
    """Compute and print the matrix; return the exit status."""
    matrix = load_matrix(args.path, allow_plaintext_secrets=args.allow_plaintext_secrets, users=args.user,
                         services=args.service)
    if matrix is None:
        return EXIT_COULD_NOT_RUN
    if args.output == "json":
        json.dump(to_json(matrix), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif args.output == "markdown":
        sys.stdout.write(render_markdown(matrix))
    else:
        sys.stdout.write(render_text(matrix))
    return EXIT_OK
