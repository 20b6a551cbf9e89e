"""`pgwarden grant`: a time-limited Group membership, committed on a new branch of the manifests repository."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from pgwarden.output import error
from proxy.snapshot import format_instant
from reconciler.grant_write import GrantRefused, parse_duration, write_grant

EXIT_OK, EXIT_COULD_NOT_RUN = 0, 2

EPILOG = """\
example:
  $ cd manifests/ && pgwarden grant --user bob --group oncall --for 2h --reason "incident 4711"
  ✓ users/bob.yaml: bob is in group oncall until 2026-12-08T18:00:00Z (spec.groups entry with validUntil)
  ✓ committed 3f2a9c1 on new branch grant/bob-oncall-20261208T160000Z (not pushed; you stay on main)
  next: git push origin grant/bob-oncall-20261208T160000Z, then open a pull request for review.

what it does:
  - adds {name: GROUP, validUntil: NOW+DURATION} to the User's spec.groups (or moves the validUntil of an
    entry already there), keeping the file's comments and formatting
  - commits that one change on top of HEAD, on a new branch grant/USER-GROUP-TIMESTAMP, with the reason
    in the commit message; your working tree, index and current branch are left as they are; nothing is pushed
  - once merged and applied, the proxy ends the membership by itself at validUntil: sessions that relied
    on it end with a FATAL naming it, with no further commit (docs/grants.md)

exit status:
  0  the commit is on the new branch
  2  could not run (unknown user or group, uncommitted changes, a bad duration, not a Git checkout)
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `grant`."""
    p = subparsers.add_parser(
        "grant", help="grant a Group membership for a limited time, as a commit on a new branch",
        description="Write a time-limited Group membership into the manifests repository as a commit on a new "
                    "branch (not pushed), so break-glass access still goes through review and history.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--user", required=True, help="the User's metadata.name")
    p.add_argument("--group", required=True, help="the Group's metadata.name")
    p.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                   help="how long: 30m, 2h, 1d, 1h30m (at most 30 days)")
    p.add_argument("--reason", required=True, help='why, for the commit message, e.g. "incident 4711"')
    p.add_argument("path", metavar="PATH", type=Path, nargs="?", default=Path("."),
                   help="the manifests directory inside a Git checkout (default: the current directory)")
    p.set_defaults(func=run_grant)


def run_grant(args: argparse.Namespace) -> int:
    if not args.path.exists():
        error(f"no such file or directory: {args.path}", hint="give the directory that holds your manifests")
        return EXIT_COULD_NOT_RUN
    try:
        length = parse_duration(args.duration)
        done = write_grant(args.path, user=args.user, group=args.group, length=length, reason=args.reason,
                           now=datetime.datetime.now(datetime.UTC))
    except GrantRefused as exc:
        error(exc.message, hint=exc.hint)
        return EXIT_COULD_NOT_RUN
    until = format_instant(done.valid_until)
    print(f"✓ {done.file}: {args.user} is in group {args.group} until {until} (spec.groups entry with validUntil)")
    print(f"✓ committed {done.commit[:7]} on new branch {done.branch} (not pushed; you stay on {done.current_branch})")
    print(f"next: git push origin {done.branch}, then open a pull request for review; once merged and applied, "
          f"the membership ends by itself at {until}.")
    return EXIT_OK
