"""`pgwarden connect -p SERVICE:PORT`: local ports where psql needs no password (the agent in pgwarden/agent.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from pathlib import Path

from pgwarden.addresses import parse_listen
from pgwarden.agent import Agent, Mapping
from pgwarden.credentials import CredentialsError, default_credentials_path
from pgwarden.output import error

EPILOG = """\
example:
  pgwarden login --cluster http://127.0.0.1:8080
  pgwarden connect -p my-postgres:5432 -p analytics:5433
  psql -h localhost -p 5432            # lands as the role the manifests choose for you

The agent runs in the foreground (Ctrl-C stops it) and listens on 127.0.0.1 (and ::1) only, for you
only: a connection from another local user's process is refused (on Linux, by the owner of the client's
socket in /proc/net/tcp). Each connection logs in to the proxy over TLS (verified with the cluster's CA)
with the saved access token, which the agent refreshes before it expires and never prints. When the
session ends (logout, revocation, expiry), clients get "your pgwarden session has ended: run pgwarden
login"; after a new login the running agent picks up the new credential by itself.

exit codes: 0 stopped by a signal, 1 not logged in or session ended (it names the `pgwarden login
--cluster URL` to run), 2 could not listen.
"""


def parse_mapping(text: str) -> Mapping:
    service, sep, port = text.rpartition(":")
    if not sep or not service or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid mapping {text!r}: use SERVICE:LOCALPORT, e.g. my-postgres:5432")
    return Mapping(service=service, port=int(port))


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("connect", help="serve services on local ports; psql there needs no password",
                              description="Run the local agent: map services to local ports, authenticated by "
                                          "the Session `pgwarden login` saved.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-p", "--port", dest="mappings", type=parse_mapping, action="append", required=True,
                   metavar="SERVICE:LOCALPORT", help="a service and the local port to serve it on (repeatable)")
    p.add_argument("--credentials", type=Path, default=None,
                   help=f"the saved login (default {default_credentials_path()}); it holds a token: keep it 0600")
    p.add_argument("--proxy", type=parse_listen, default=None, metavar="HOST:PORT",
                   help="the proxy's address, if the cluster info does not say it")
    p.add_argument("--ca", type=Path, default=None, metavar="FILE",
                   help="the CA certificate that signed the proxy's certificate, if the cluster info lacks it")
    p.add_argument("--socket-dir", type=Path, default=None, metavar="DIR",
                   help="also serve each mapping on a unix socket DIR/.s.PGSQL.PORT (psql -h DIR -p PORT); the "
                        "kernel names each client's user there (SO_PEERCRED), e.g. --socket-dir ~/.pgwarden/run")
    p.set_defaults(func=run_connect)


def run_connect(args: argparse.Namespace) -> int:
    host, port = args.proxy if args.proxy else (None, None)
    agent = Agent(args.credentials or default_credentials_path(), args.mappings, proxy_host=host, proxy_port=port,
                  ca_file=args.ca, socket_dir=args.socket_dir)
    code = 0

    async def main() -> None:
        nonlocal code
        try:
            bound = await agent.start()
        except CredentialsError as exc:
            error(exc.message, hint=exc.hint)
            code = 1
            await agent.close()
            return
        except OSError as exc:
            error(f"cannot listen on a local port: {exc.strerror or exc}",
                  hint="pick another port with -p SERVICE:PORT")
            code = 2
            await agent.close()
            return
        for mapping, local_port in bound:
            print(f"{mapping.service} → localhost:{local_port} (psql -h localhost -p {local_port})", flush=True)
            if args.socket_dir is not None:
                print(f"{mapping.service} → {agent.socket_path(local_port)} (psql -h {args.socket_dir} "
                      f"-p {local_port})", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
            await agent.close()

    from runtime.process import run  # the proxy's runtime module is heavy to import: only when serving

    run(main)
    return code
