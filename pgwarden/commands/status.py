"""`pgwarden status`: what is live, from the running instance's admin API."""

from __future__ import annotations

import argparse
import datetime
import json
from typing import Any

from pgwarden.adminclient import AdminUnavailable, add_target_options, call, socket_path
from pgwarden.output import error
from proxy import grants
from proxy.snapshot import format_instant
from reconciler.access import keyless_from_wire

EXPIRING_WITHIN = datetime.timedelta(hours=24)

EPILOG = """\
example:
  pgwarden status              # conditions, revisions, last 5 attempts, objects, upstream health,
                               # and the grants (validUntil) that expire within 24 h
  pgwarden status -o json | jq '.conditions'

exit codes: 0 Ready, 1 not Ready (Stalled, failing, suspended), 2 no instance running.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("status", help="show what is live and why",
                              description="Show the reconciler's status: source, revisions, conditions "
                                          "(Ready/Reconciling/Stalled), last attempts, objects and health.",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-o", "--output", choices=("text", "json"), default="text")
    add_target_options(p)
    p.set_defaults(func=run_status)


def _when(ts: float | None) -> str:
    if not ts:
        return "never"
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def expiring_grants(state: dict[str, Any], now: datetime.datetime) -> list[dict[str, str]]:
    """The live snapshot's windowed grants (GET /v1/state) that are in force and expire within 24 h."""
    found = grants.expiring(grants.windowed(keyless_from_wire(state)), now, EXPIRING_WITHIN)
    return [{"grant": g.label(), "validUntil": format_instant(g.validity.valid_until), "in": _left(g, now)}
            for g in found if g.validity.valid_until is not None]


def _left(grant: grants.Grant, now: datetime.datetime) -> str:
    assert grant.validity.valid_until is not None
    minutes = int((grant.validity.valid_until - now).total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def render(status: dict[str, Any], proxy: dict[str, Any] | None, expiring: list[dict[str, str]] | None = None
           ) -> str:
    lines = [f"source:     {status['source']} (ref {status['ref']}, path {status['path']})",
             f"suspended:  {'yes' if status['suspended'] else 'no'}",
             f"applied:    {status['last_applied_revision'] or '(nothing yet)'} at {_when(status['last_applied_at'])}"
             f" (generation {status['generation']})",
             f"attempted:  {status['last_attempted_revision'] or '(nothing yet)'}"]
    if status.get("next_retry_at"):
        lines.append(f"next retry: {_when(status['next_retry_at'])}")
    if proxy:
        lines.append(f"proxy:      generation {proxy['generation']}, {proxy['sessions']} open session(s)")
    lines.append("conditions:")
    for c in status["conditions"]:
        lines.append(f"  {c['type']:<12} {c['status']:<7} {c['reason']}: {c['message']}")
    lines.append("last attempts:")
    for a in status["history"]:
        lines.append(f"  {_when(a['started_at'])}  {a['result']:<9} {a['revision']}  {a['reason']} "
                     f"({a['duration_s'] * 1000:.0f} ms)")
        for e in a.get("errors", [])[:20] if a["result"] == "Failed" else []:
            lines.append(f"      {e}")
        for change in a.get("changes", [])[:10]:
            lines.append(f"      {change}")
        if len(a.get("changes", [])) > 10:
            lines.append(f"      … and {len(a['changes']) - 10} more")
    lines.append("objects:")
    for kind, names in status["objects"].items():
        lines.append(f"  {kind:<8} {len(names):>4}  {', '.join(names[:8])}{' …' if len(names) > 8 else ''}")
    if status["health"]:
        lines.append("upstream health:")
        for service, configs in sorted(status["health"].items()):
            for config, result in sorted(configs.items()):
                lines.append(f"  {service}/{config}: {result}")
    if expiring:
        lines.append("grants expiring within 24 h:")
        lines += [f"  {g['grant']}: until {g['validUntil']} (in {g['in']})" for g in expiring]
    return "\n".join(lines)


def render_replicas(shared: dict[str, Any]) -> str:
    """Who leads (holds the writer lease) and what each live replica has applied."""
    lines = [f"\nreplicas:   {len(shared['replicas'])} live; this is {shared['replica']}; leader (writer lease): "
             f"{shared['leader'] or '(none yet)'}{' (this one)' if shared['isLeader'] else ''}"]
    for r in shared["replicas"]:
        lines.append(f"  {r['id']:<24} {'leader ' if r['isLeader'] else '       '} {r['revision'] or '(nothing yet)'}  "
                     f"{r['databaseConnections']} connection(s), cancel inbox {r['cancelAddress']}")
    return "\n".join(lines)


def run_status(args: argparse.Namespace) -> int:
    path = socket_path(args.data_dir, args.admin_socket)
    try:
        code, status = call(path, "GET", "/v1/status")
        _, proxy = call(path, "GET", "/healthz")
        state_code, state = call(path, "GET", "/v1/state")
        replicas_code, replicas = call(path, "GET", "/v1/replicas")  # 404 unless replicas share a state store
    except AdminUnavailable as exc:
        error(str(exc), hint="start one with `pgwarden up`, or pass --data-dir")
        return 2
    if code == 404:
        error("this instance runs no reconciler (started with `pgwarden proxy`?)")
        return 2
    expiring = expiring_grants(state, datetime.datetime.now(datetime.UTC)) if state_code == 200 else []
    shared = replicas if replicas_code == 200 and isinstance(replicas, dict) else None
    if args.output == "json":
        print(json.dumps({**status, "proxy": proxy, "expiringGrants": expiring,
                          **({"replicas": shared} if shared else {})}, indent=2))
    else:
        print(render(status, proxy, expiring) + (render_replicas(shared) if shared else ""))
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in status["conditions"])
    return 0 if ready and not status["suspended"] else 1
