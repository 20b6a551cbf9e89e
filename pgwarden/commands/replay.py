"""`pgwarden replay --access-log FILE [--against PATH|REF] [PATH]`: what a policy change would change, by replay."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgwarden.commands.validate import add_plaintext_option, count, distinct_hints, problem_lines
from pgwarden.output import error
from proxy.errors import PgwardenError
from proxy.snapshot import Snapshot
from reconciler.access import keyless_snapshot
from reconciler.errors import ManifestErrors
from reconciler.git_tree import GitTreeError, parse_tree, read_tree
from reconciler.replay import DEFAULT_EXAMPLES, replay
from reconciler.replay_report import render_markdown, render_text, to_json
from reconciler.review import load_for_review, review_documents

EXIT_NO_CHANGES, EXIT_CHANGES, EXIT_COULD_NOT_RUN = 0, 1, 2

EPILOG = """\
example: would the policies of this pull request deny anything bob and ci-bot did last week?
  $ pgwarden replay --access-log /var/log/pgwarden/access.log --against pr-branch-checkout/
  replayed 1204 requests of /var/log/pgwarden/access.log under pr-branch-checkout/: ALLOW → DENY 2 · ...
    3 skipped: no query text (logged with --log-queries none or normalized)

  bob · guarded · 37 replayed · ALLOW → DENY 2 · DENY → ALLOW 0
    ALLOW → DENY  2026-12-07T03:30:00.120000Z QUERY DELETE FROM items WHERE name = 'old'
        was ALLOW (read-only-sql/everything-else); now DENY (no-deletes/deletes)

  $ pgwarden replay --access-log access.log --against origin/main -o markdown .   # PATH at a git ref

which policies: --against PATH (a directory or file of manifests), else --against REF (PATH at that git
revision, read from the repository's objects), else PATH itself (default .). The repository is validated
and built as `pgwarden access` builds it: keyless, no secret value is read.

what is replayed: the QUERY, PARSE and FUNCTION_CALL records of the access log (JSON lines as `pgwarden up`
or `pgwarden proxy --access-log` write them). Each is decided again as the proxy would decide it now under
those policies: routing (with the client's startup request from the session's SESSION_START), the config's
authorization mode, then the policy rules, with the session's AAL and login method as logged and the clock
set to the record's time. Statements are re-decided from their text, so the log must hold it
(--log-queries full, the default); records without it, BIND/EXECUTE re-checks and requests the gate refused
itself (not a policy) are counted as skipped, and the report says how many and why. An AUDIT policy never
denies, in the log or in a replay.

exit status:
  0  no request would be decided differently
  1  some would (ALLOW → DENY or DENY → ALLOW)
  2  could not run: the log is missing, the policies invalid, REF not found
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `replay`."""
    p = subparsers.add_parser(
        "replay",
        help="re-decide an access log's queries under a repository's policies: what would be denied or allowed",
        description="Replay the requests of an access log against the policies of a repository (offline).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", type=Path, nargs="?", default=Path("."),
                   help="the manifests (a directory or one file; default .), or with --against REF the path in "
                        "the git repository")
    p.add_argument("--access-log", metavar="FILE", type=Path, required=True,
                   help="the access log to replay (JSON lines, as the proxy writes it)")
    p.add_argument("--against", metavar="PATH|REF", default=None,
                   help="the policies to replay under: a manifests directory or file, or a git ref of PATH's "
                        "repository (default: PATH as it is)")
    p.add_argument("--examples", metavar="N", type=int, default=DEFAULT_EXAMPLES,
                   help=f"examples shown per user, service and direction (default {DEFAULT_EXAMPLES})")
    p.add_argument("-o", "--output", choices=("text", "json", "markdown"), default="text",
                   help="text (default), json, or markdown for a pull-request comment")
    add_plaintext_option(p)
    p.set_defaults(func=run_replay)


def run_replay(args: argparse.Namespace) -> int:
    """Replay, print the report, return the exit status."""
    if not args.access_log.is_file():
        error(f"no such access log: {args.access_log}",
              hint="give the file the proxy writes with --access-log (JSON lines)")
        return EXIT_COULD_NOT_RUN
    loaded = _policies(args)
    if loaded is None:
        return EXIT_COULD_NOT_RUN
    snapshot, where = loaded
    try:
        with args.access_log.open(encoding="utf-8", errors="replace") as lines:
            result = replay(lines, snapshot, examples=max(args.examples, 0))
    except OSError as exc:
        error(f"cannot read {args.access_log}: {exc.strerror or type(exc).__name__}")
        return EXIT_COULD_NOT_RUN
    source = str(args.access_log)
    if args.output == "json":
        json.dump(to_json(result, source=source, policies=where), sys.stdout, indent=2, ensure_ascii=False)
        sys.stdout.write("\n")
    elif args.output == "markdown":
        sys.stdout.write(render_markdown(result, source=source, policies=where))
    else:
        sys.stdout.write(render_text(result, source=source, policies=where))
    return EXIT_CHANGES if result.is_changed else EXIT_NO_CHANGES


def _policies(args: argparse.Namespace) -> tuple[Snapshot, str] | None:
    """The keyless snapshot to replay under and how to name it, or None after saying why not."""
    against: str | None = args.against
    path: Path = args.path
    try:
        if against is not None and not Path(against).exists():
            if not path.exists():
                error(f"no such file or directory: {path}", hint="give the manifests' path in the repository")
                return None
            tree = read_tree(path, against)
            documents = review_documents(parse_tree(tree), allow_plaintext_secrets=args.allow_plaintext_secrets)
            where = f"{path} at {tree.ref} ({tree.short})"
        else:
            path = Path(against) if against is not None else path
            if not path.exists():
                error(f"no such file or directory: {path}", hint="give the directory that holds your manifests")
                return None
            documents = load_for_review(path, allow_plaintext_secrets=args.allow_plaintext_secrets)
            where = str(path)
        return keyless_snapshot(documents, source=where), where
    except GitTreeError as exc:
        error(exc.message, hint=exc.hint)
    except ManifestErrors as exc:
        error(f"the manifests under {path} are not valid ({count(len(exc.errors), 'problem')})",
              detail="\n".join(problem_lines(path, exc.errors)),
              hint="\n".join([*distinct_hints(exc.errors), f"`pgwarden validate {path}` lists the same problems"]))
    except PgwardenError as exc:
        error(f"cannot build the policies of {path}: {exc.message}", detail=exc.detail, hint=exc.hint)
    return None
