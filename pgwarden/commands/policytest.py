"""`pgwarden test PATH`: run the access tests kept in the repository (.pgwarden/tests/*.yaml), offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from pgwarden.commands.validate import count, distinct_hints, problem_lines
from pgwarden.output import error
from proxy.routing import LiveSnapshot
from reconciler.access import keyless_snapshot
from reconciler.errors import ManifestErrors
from reconciler.policytests import TESTS_DIR, junit_xml, load_cases, run_case
from reconciler.review import load_for_review

EXIT_PASSED, EXIT_FAILED, EXIT_COULD_NOT_RUN = 0, 1, 2

EPILOG = f"""\
example:
  $ cat examples-repo/{TESTS_DIR}/access.yaml
  tests:
    - name: bob is a junior and lands read-only
      user: bob
      service: my-db
      expect: {{decision: ALLOW, config: read-only, role: read_only}}
    - name: DDL needs a passkey session
      user: ada
      service: production
      aal: AAL1                          # AAL1 (a token, default) or AAL2 (a passkey login)
      at: 2026-12-08T10:00:00+01:00      # what now() returns (default: now)
      query: CREATE TABLE t (x int)      # or functionCall: true; neither: the case is about connecting
      expect: {{decision: DENY, rule: ddl-needs-passkey/ddl-without-aal2}}
  $ pgwarden test examples-repo/
  ✓ bob is a junior and lands read-only
  ...
  ✓ 6 passed
  $ echo $?
  0

where the tests live: every *.yaml / *.yml file in PATH/{TESTS_DIR}/ (the manifest loader skips dot-
directories, so they are never read as manifests), each a mapping with a `tests` list, validated with
schemas/repository/access-tests.schema.json. A case connects as `user` to `service` with dbname=SERVICE and a token
session, and states `expect.decision` (ALLOW/DENY: of the query, else of the connection; a refused
connection is DENY) and optionally `connect` (true/false), `config` (routing's choice), `role` (the
upstream role) and `rule` (`policy/rule` that decided the query, or the connection when there is no
query). Decisions come from the proxy's own routing and policy engine; no keys, no proxy.

in CI: pgwarden test --junit pgwarden-test.xml .   (see examples-repo/.github/workflows/)

exit status:
  0  every case passed
  1  a case failed (each failure printed as FILE, tests[N]: what differs)
  2  could not run: PATH missing or invalid, a test file invalid, or no test files found
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `test`."""
    p = subparsers.add_parser(
        "test",
        help=f"run the access tests in PATH/{TESTS_DIR}/*.yaml against the manifests (offline)",
        description="Run the repository's access tests: who connects where as which role, which queries "
                    "are allowed.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", metavar="PATH", type=Path, nargs="?", default=Path("."),
                   help="the manifests directory (default: .)")
    p.add_argument("--tests", metavar="DIR", type=Path, default=None,
                   help=f"read the test files from DIR instead of PATH/{TESTS_DIR}")
    p.add_argument("--junit", metavar="FILE", type=Path, default=None, help="also write JUnit XML to FILE")
    p.add_argument("--allow-plaintext-secrets", action="store_true",
                   help="accept Secret manifests that are not sops-encrypted (local development directories "
                        "only); their values are never read or printed")
    p.set_defaults(func=run_test)


def run_test(args: argparse.Namespace) -> int:
    """Run every case, print a line per case and a summary, return the exit status."""
    if not args.path.is_dir():
        error(f"no such directory: {args.path}", hint="give the directory that holds your manifests")
        return EXIT_COULD_NOT_RUN
    try:
        snapshot = keyless_snapshot(load_for_review(args.path, allow_plaintext_secrets=args.allow_plaintext_secrets))
    except ManifestErrors as exc:
        error(f"the manifests under {args.path} are not valid ({count(len(exc.errors), 'problem')})",
              detail="\n".join(problem_lines(args.path, exc.errors)),
              hint="\n".join([*distinct_hints(exc.errors), f"`pgwarden validate {args.path}` lists the same problems"]))
        return EXIT_COULD_NOT_RUN
    try:
        cases = load_cases(args.path, args.tests)
    except ManifestErrors as exc:
        error(f"the access tests are not valid ({count(len(exc.errors), 'problem')})",
              detail="\n".join(problem_lines(args.path, exc.errors)),
              hint="schemas/repository/access-tests.schema.json describes the shape; "
                   "`pgwarden test --help` has an example")
        return EXIT_COULD_NOT_RUN
    if not cases:
        where = args.tests or args.path / TESTS_DIR
        error(f"no access tests found in {where}", hint="add *.yaml files with a `tests` list (see --help)")
        return EXIT_COULD_NOT_RUN
    live = LiveSnapshot(snapshot, 0)
    results = [run_case(live, case) for case in cases]
    for r in results:
        if r.failures:
            print(f"✗ {r.case.name}  ({args.path / r.case.file}, tests[{r.case.index}])")
            for failure in r.failures:
                print(f"    {failure}")
            print(f"    decided: {r.got}")
        else:
            print(f"✓ {r.case.name}")
    failed = sum(1 for r in results if r.failures)
    passed = len(results) - failed
    print(f"✗ {failed} failed, {passed} passed" if failed else f"✓ {count(passed, 'case')} passed")
    if args.junit is not None:
        args.junit.write_bytes(junit_xml(results))
    return EXIT_FAILED if failed else EXIT_PASSED
