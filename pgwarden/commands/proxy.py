"""`pgwarden proxy`: serve PostgreSQL clients from the manifests in a directory."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit

from identity.revocation_watch import STATE_OUTAGE_GRACE_S
from pgwarden.addresses import parse_listen
from pgwarden.keys import add_key_options, load_keyring
from pgwarden.output import error
from pgwarden.state_dsn import add_state_options, state_from
from pgwarden.worker_options import add_worker_options, is_parent
from proxy.audit.normalize import QueryText
from proxy.audit.otel import settings_from
from proxy.offload import run_beside_relay
from proxy.preauth import PreAuthLimits
from proxy.server import ProxyServer
from reconciler.directory import load_snapshot
from reconciler.errors import ConfigError, ManifestErrors
from reconciler.sops import KeyRing, SopsError
from runtime.datadir import default_data_dir
from runtime.process import ProxyOptions, run, serve_until_signal, start_proxy
from runtime.workers import WorkersFailed, announce_ready, run_workers, start_worker, worker_options

log = logging.getLogger("pgwarden")

EPILOG = """\
example:
  pgwarden proxy --manifests examples-repo/ --age-key-file examples-repo/demo-age-key.txt
  export PGPASSWORD=$(pgwarden token issue --user alice)
  psql "host=127.0.0.1 port=6543 dbname=my-db sslmode=require user=alice"

Choosing a service: the TLS SNI host name's first label (e.g. host=my-db.localhost), else the
database name: dbname=my-db, or dbname=my-db/other_db to also ask for a database; with
--default-service, any other database name goes to that service unchanged.
Secrets may be plain text here (local development) or sops-encrypted (give the keys).
Send SIGHUP to re-read the manifests; a bad edit is reported and the running state is kept. The
manifests are read and compiled beside the relay (worker threads); sessions keep running meanwhile.
In production run one worker process per core, sharing the port: --workers auto.
"""


def add_proxy_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 6543), metavar="HOST:PORT",
                   help="where PostgreSQL clients connect (default 127.0.0.1:6543; port 0 picks a free one)")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="keys, certificates and the admin socket (default $PGWARDEN_DATA_DIR or the "
                        "per-user data directory)")
    p.add_argument("--admin-socket", type=Path, default=None, help="admin API socket (default DATA_DIR/admin.sock)")
    p.add_argument("--access-log", default="-", metavar="PATH|-",
                   help="JSON-lines access log file, or - for stdout (default)")
    p.add_argument("--tls-cert", type=Path, help="server certificate (PEM); default: a local CA and certificate "
                                                 "generated in the data directory")
    p.add_argument("--tls-key", type=Path, help="private key for --tls-cert")
    add_key_options(p)
    add_state_options(p)
    p.add_argument("--state-outage-grace", type=parse_grace, default=STATE_OUTAGE_GRACE_S, metavar="DURATION",
                   help="how long live identity sessions are trusted while the state store is unreachable "
                        "(revocations cannot be heard meanwhile); after it they are ended. E.g. 90s, 5m "
                        "(default 5m)")
    p.add_argument("--default-service", metavar="NAME",
                   help="serve connections whose database name names no service from this service, passing "
                        "the whole name on as the database (for single-service deployments and unmodified apps)")
    p.add_argument("--log-queries", choices=[q.value for q in QueryText], default=QueryText.FULL.value,
                   help="query text in the access log: full (as sent), normalized (literals replaced by $1, $2…, "
                        "for data-sensitive sites), or none (default full), e.g. --log-queries normalized")
    p.add_argument("--otlp-endpoint", type=parse_otlp_endpoint, metavar="URL",
                   help="also export the access log as OpenTelemetry logs to this collector, e.g. "
                        "http://127.0.0.1:4318 (OTLP/HTTP; /v1/logs is added) or, with --otlp-protocol grpc, "
                        "http://127.0.0.1:4317. Default: $OTEL_EXPORTER_OTLP_LOGS_ENDPOINT or "
                        "$OTEL_EXPORTER_OTLP_ENDPOINT when set, else no export. Records are dropped (and "
                        "counted) rather than slowing queries when the collector is down")
    p.add_argument("--otlp-protocol", choices=["http", "grpc"], default=None,
                   help="OTLP/HTTP (protobuf) or OTLP/gRPC (default: $OTEL_EXPORTER_OTLP_PROTOCOL, else http), "
                        "e.g. --otlp-protocol grpc")
    p.add_argument("--otlp-header", type=parse_otlp_header, action="append", default=[], metavar="NAME=VALUE",
                   help="header sent with every export, repeatable, e.g. --otlp-header 'authorization=Bearer …'. "
                        "A value here is visible in the process list: prefer $OTEL_EXPORTER_OTLP_HEADERS for "
                        "credentials. Values are never printed")
    add_preauth_options(p)


_PREAUTH = PreAuthLimits()


def add_preauth_options(p: argparse.ArgumentParser) -> None:
    """Limits on PostgreSQL clients that have not authenticated yet (proxy/preauth.py)."""
    g = p.add_argument_group("limits before a PostgreSQL client authenticates")
    g.add_argument("--preauth-timeout", type=float, default=_PREAUTH.timeout_s, metavar="SECONDS",
                   help="SSL request, TLS handshake, startup packet and password must all arrive within this "
                        f"(default {_PREAUTH.timeout_s:g})")
    g.add_argument("--preauth-max-message", type=int, default=_PREAUTH.max_message_bytes, metavar="BYTES",
                   help="largest startup packet or password message; no more is buffered "
                        f"(default {_PREAUTH.max_message_bytes}; after login the relay's limits apply)")
    g.add_argument("--preauth-max-connections", type=int, default=_PREAUTH.max_connections, metavar="N",
                   help="unauthenticated connections at once; one more drops the OLDEST, so idle sockets cannot "
                        f"lock out a client that logs in promptly (default {_PREAUTH.max_connections})")
    g.add_argument("--preauth-max-per-address", type=int, default=_PREAUTH.max_per_address, metavar="N",
                   help="unauthenticated connections at once per client IP address, oldest dropped first "
                        "(default 0: no per-address cap, as clients behind NAT share one)")


def preauth_limits_from(args: argparse.Namespace) -> PreAuthLimits:
    try:
        return PreAuthLimits(timeout_s=args.preauth_timeout, max_message_bytes=args.preauth_max_message,
                             max_connections=args.preauth_max_connections,
                             max_per_address=args.preauth_max_per_address)
    except ValueError as exc:
        raise SystemExit(f"pgwarden: error: {exc}") from None


def parse_grace(text: str) -> float:
    """`90`, `90s`, `5m` or `1h` as seconds (at least 1)."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    try:
        seconds = float(number) * units[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 5m)") from None
    if not 1 <= seconds <= 86_400:
        raise argparse.ArgumentTypeError("between 1s and 24h")
    return seconds


def parse_otlp_endpoint(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # Not echoed: a URL may carry user:password.
        raise argparse.ArgumentTypeError("not an http(s)://HOST:PORT URL, e.g. http://127.0.0.1:4318")
    return text


def parse_otlp_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError("expected NAME=VALUE")  # the text is not echoed: it may be a credential
    return name.strip(), value.strip()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "proxy", help="run the proxy on a directory of manifests",
        description="Run the PostgreSQL proxy, routing from the Service/User/Group/Secret manifests in DIR.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--manifests", type=Path, required=True, metavar="DIR",
                   help="directory of YAML/JSON manifests (plain-text Secrets allowed for local use)")
    add_proxy_options(p)
    add_worker_options(p)
    p.set_defaults(func=run_proxy)


def _has_keys(args: argparse.Namespace) -> bool:
    """Decrypt sops Secrets when the user gave keys, on the command line or as sops reads them."""
    return bool(args.age_key_file or args.pgp_key_file or args.gnupghome
                or os.environ.get("SOPS_AGE_KEY_FILE") or os.environ.get("SOPS_AGE_KEY"))


def options_from(args: argparse.Namespace) -> ProxyOptions:
    host, port = args.listen
    access_log = None if args.access_log in ("", "none") else args.access_log
    return ProxyOptions(listen_host=host, listen_port=port, data_dir=args.data_dir or default_data_dir(),
                        admin_socket=args.admin_socket, access_log=access_log,
                        tls_cert=args.tls_cert, tls_key=args.tls_key, default_service=args.default_service,
                        state=state_from(args, os.environ), log_queries=QueryText(args.log_queries),
                        preauth=preauth_limits_from(args),
                        state_outage_grace_s=args.state_outage_grace,
                        otlp=settings_from(args.otlp_endpoint, args.otlp_protocol, dict(args.otlp_header), os.environ))


class ManifestReloads:
    """SIGHUP: re-read the manifest directory and compile it in a worker thread; the loop only swaps.

    One reload runs at a time, so the directory is always read in signal order; SIGHUPs that arrive during a
    reload are folded into one more pass, which reads the directory after all of them.
    Mutable: it holds the running reload and whether another was asked for meanwhile.
    """

    def __init__(self, server: ProxyServer, manifests: Path, keys: KeyRing | None) -> None:
        self.server = server
        self.manifests = manifests
        self.keys = keys
        self.running: asyncio.Task[None] | None = None
        self.is_asked_again = False

    def request(self) -> None:
        """The SIGHUP handler: start a reload, or ask the running one for another pass."""
        if self.running is not None and not self.running.done():
            self.is_asked_again = True
            return
        self.running = asyncio.get_running_loop().create_task(self._reload_until_current())

    async def _reload_until_current(self) -> None:
        while True:
            self.is_asked_again = False
            try:
                snapshot = await run_beside_relay(load_snapshot, self.manifests, keys=self.keys)
                generation = await self.server.reload(snapshot)
                log.warning("reloaded %s: generation %d", self.manifests, generation)
            except Exception as exc:  # noqa: BLE001 - report, keep serving the last good state
                log.error("reload of %s failed, keeping generation %d:\n%s",
                          self.manifests, self.server.live.generation, exc)
            if not self.is_asked_again:
                return


def run_proxy(args: argparse.Namespace) -> int:
    if (args.tls_cert is None) != (args.tls_key is None):
        error("--tls-cert and --tls-key go together")
        return 2
    try:
        keys = load_keyring(args) if _has_keys(args) else None
    except (SopsError, OSError) as exc:
        error(f"cannot read the decryption keys: {exc}")
        return 2
    try:
        return _serve_manifests(args, keys)
    finally:
        if keys is not None:
            keys.close()  # removes any throwaway GnuPG keyring


def _serve_manifests(args: argparse.Namespace, keys: KeyRing | None) -> int:
    try:
        snapshot = load_snapshot(args.manifests, keys=keys)
    except (ManifestErrors, ConfigError) as exc:
        error(f"the manifests in {args.manifests} are not valid:\n{exc}")
        return 1
    except FileNotFoundError as exc:
        error(f"no such directory: {exc.filename or args.manifests}")
        return 2
    if is_parent(args):  # --workers N: this process only starts, signals and watches the workers
        host, port = args.listen
        try:
            run_workers(host, port, args.workers, ready_to_stderr=args.access_log == "-")
        except OSError as exc:
            error(f"cannot listen on {host}:{port}: {exc.strerror or exc}", hint="pick another address with --listen")
            return 2
        except WorkersFailed as exc:
            error(exc.message, hint=exc.hint)
            return 1
        return 0

    async def main() -> None:
        slot = args.worker_slot
        if slot is None:
            running = await start_proxy(options_from(args), snapshot)
        else:
            running = await start_worker(worker_options(options_from(args), slot), snapshot, slot)
        announce_ready(running.ready_line(), is_to_stderr=args.access_log == "-")

        reloads = ManifestReloads(running.server, args.manifests, keys)
        await serve_until_signal(running, on_reload=reloads.request)

    try:
        run(main)
    except OSError as exc:
        error(f"cannot listen on {args.listen[0]}:{args.listen[1]}: {exc.strerror or exc}",
              hint="pick another address with --listen HOST:PORT")
        return 2
    return 0
