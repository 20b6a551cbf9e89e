"""`pgwarden diff PATH`: what a pull request would change, against a git revision; secrets masked."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pgwarden.commands.validate import add_plaintext_option, count, distinct_hints, problem_lines
from pgwarden.output import error
from reconciler.access_report import diff_access, render_access_markdown, render_access_text
from reconciler.diff import diff_documents
from reconciler.diff_report import render_markdown, render_text
from reconciler.errors import ManifestErrors
from reconciler.git_tree import DEFAULT_BASE, GitTreeError, parse_tree, read_tree
from reconciler.review import load_for_review

EXIT_NO_CHANGES, EXIT_CHANGES, EXIT_COULD_NOT_RUN = 0, 1, 2

EPILOG = """\
example: a branch that changes a Service and rotates a sops-encrypted Secret
  $ pgwarden diff --against origin/main examples-repo/
  --- origin/main (1f3a9c0b7d2e) examples-repo
  +++ working tree examples-repo
  ~ Secret full-access-password (changed)
      ~ data.value: (changed, value hidden)
  ~ Service my-db (changed)
      ~ spec.dynamicConfig.configs[1].postgres.user: full_access -> admin

  2 changed (Secret: 1 changed; Service: 1 changed)
  $ echo $?
  1

"before" is PATH as committed at REF, read from git objects (nothing is checked out); "after"
is PATH in the working tree, validated first as `pgwarden validate` does. Objects are matched by
kind and metadata.name, fields by path; named lists (configs) are matched by name.
No proxy and no decryption keys are needed. Secret values, sops ciphertext and MACs are never
printed: a Secret whose encrypted data changed shows `data.value: (changed, value hidden)`.

in a GitHub Actions pull-request workflow (post the result as a PR comment):
  permissions: {contents: read, pull-requests: write}
  steps:
    - uses: actions/checkout@v4
      with: {fetch-depth: 0}               # so origin/<base branch> exists
    - run: pip install pgwarden
    - run: pgwarden validate examples-repo/
    - name: pgwarden diff
      run: |
        set +e
        pgwarden diff --against "origin/$GITHUB_BASE_REF" --output markdown examples-repo/ > diff.md
        status=$?
        [ "$status" -le 1 ] || exit "$status"   # 0 no change, 1 changes, 2 error
    - name: comment on the pull request
      run: gh pr comment "$PR" --edit-last --body-file diff.md || gh pr comment "$PR" --body-file diff.md
      env:
        GH_TOKEN: ${{ github.token }}
        PR: ${{ github.event.pull_request.number }}

exit status:
  0  no change
  1  changes (printed)
  2  could not diff: PATH missing, not in a git repository, REF not found, PATH invalid in the
     working tree, or unreadable at REF
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `diff`."""
    p = subparsers.add_parser(
        "diff",
        help="show what the manifests under PATH change against a git revision (secrets masked)",
        description="Compare the manifests under PATH in the working tree with PATH at a git revision.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", type=Path, help="a directory of YAML/JSON manifests, or one file")
    p.add_argument("--against", metavar="REF", default=None,
                   help=f"git revision to compare with: branch, tag or sha (default: {DEFAULT_BASE} if it exists, "
                        "else HEAD)")
    p.add_argument("-o", "--output", choices=("text", "markdown"), default="text",
                   help="text (default) or markdown for a pull-request comment")
    add_plaintext_option(p)
    p.set_defaults(func=run_diff)


def run_diff(args: argparse.Namespace) -> int:
    """Diff, print the result, return the exit status."""
    if not args.path.exists():
        error(f"no such file or directory: {args.path}", hint="give the directory that holds your manifests")
        return EXIT_COULD_NOT_RUN
    try:
        base = read_tree(args.path, args.against)
    except GitTreeError as exc:
        error(exc.message, hint=exc.hint)
        return EXIT_COULD_NOT_RUN
    where = f"{base.ref} ({base.short})"
    try:
        after = load_for_review(args.path, allow_plaintext_secrets=args.allow_plaintext_secrets)
    except ManifestErrors as exc:
        # An invalid revision has no well-defined state to compare: say so rather than diff half of it.
        _report(f"cannot diff: the manifests under {args.path} are not valid ({count(len(exc.errors), 'problem')})",
                args.path, exc, f"fix them first; `pgwarden validate {args.path}` lists the same problems")
        return EXIT_COULD_NOT_RUN
    try:
        before = parse_tree(base)
    except ManifestErrors as exc:
        _report(f"cannot diff: {args.path} at {where} cannot be read ({count(len(exc.errors), 'problem')})",
                args.path, exc, "compare against another revision with --against REF")
        return EXIT_COULD_NOT_RUN
    changes = diff_documents(before, after)
    # Who can now do what: printed first, before the object changes (no object change, no access change).
    access = diff_access(before, after) if not changes.is_empty else []
    absent = "" if base.is_present else f" ({args.path} does not exist at {base.ref}: everything is new)"
    if args.output == "markdown":
        subtitle = f"`{args.path}` at `{base.ref}` (`{base.short}`) → working tree{absent}"
        sys.stdout.write(render_markdown(changes, subtitle=f"{subtitle}\n\n{render_access_markdown(access)}".rstrip()))
    else:
        sys.stdout.write(f"--- {where} {args.path}{absent}\n+++ working tree {args.path}\n")
        sys.stdout.write(render_access_text(access))
        sys.stdout.write(render_text(changes))
    return EXIT_NO_CHANGES if changes.is_empty else EXIT_CHANGES


def _report(message: str, path: Path, exc: ManifestErrors, hint: str) -> None:
    error(message, detail="\n".join(problem_lines(path, exc.errors)),
          hint="\n".join([*distinct_hints(exc.errors), hint]))
