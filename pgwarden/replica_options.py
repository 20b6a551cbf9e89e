"""The replica options of `pgwarden up` (runtime/replica.py), for several replicas on one PostgreSQL --state."""

from __future__ import annotations

import argparse

from pgwarden.addresses import parse_listen
from runtime.replica import ReplicaSettings


def add_replica_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("replicas (several `pgwarden up` on one PostgreSQL --state; docs/replicas.md)")
    g.add_argument("--replica-id", default=None, metavar="NAME",
                   help="this replica's name in `pgwarden status` and the directory (default: HOST-RANDOM), "
                        "e.g. --replica-id $HOSTNAME")
    g.add_argument("--cancel-listen", type=parse_listen, default=None, metavar="HOST:PORT",
                   help="where other replicas forward cancel requests for this one's sessions (signed with a key "
                        "derived from the shared state key); default: the --listen host, a free port")
    g.add_argument("--advertise-host", default=None, metavar="HOST",
                   help="the address other replicas reach this one's cancel inbox at (default: the "
                        "--cancel-listen host, or this host's address when that is a wildcard)")


def replica_settings_from(args: argparse.Namespace) -> ReplicaSettings:
    return ReplicaSettings(id=args.replica_id, cancel_listen=args.cancel_listen, advertise_host=args.advertise_host)
