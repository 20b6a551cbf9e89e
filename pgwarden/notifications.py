"""`pgwarden up --notify-url-file PATH`: webhook notifications of status changes and revocations.

Flags, not a manifest: notifications report on the manifests repository itself (a Stalled revision is exactly a
commit that cannot be trusted to configure anything), belong to whoever runs pgwarden rather than to whoever
reviews access, and carry a credential (a Slack URL is one) that comes from the platform, like the state store.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from urllib.parse import urlsplit

from pgwarden.state_dsn import MAX_STATE_FILE_BYTES
from reconciler.notify import (
    ATTEMPT_TIMEOUT_S,
    QUEUE_SIZE,
    Format,
    WebhookSettings,
)

URL_ENV = "PGWARDEN_NOTIFY_URL"


def add_notification_options(p: argparse.ArgumentParser) -> None:
    group = p.add_argument_group(
        "notifications", "POST an event to a webhook when a revision stalls, when pgwarden is Ready again, when an "
        "upstream login fails or works again, and when identity sessions are revoked through the admin API. "
        "Sent from a bounded queue with retries (1 s doubling to 30 s, 6 attempts): a slow or failing receiver "
        "never delays reconciling; events that do not fit are dropped and counted in "
        "pgwarden_notifications_total{result=\"dropped\"}")
    group.add_argument("--notify-url-file", metavar="PATH", type=_read_url_file, default=None, dest="notify_url",
                       help=f"file whose first line is the webhook URL (it may hold a token, as Slack's does: keep "
                            f"it mode 0600, or mount it from a Kubernetes Secret); also ${URL_ENV}. The URL is "
                            "never logged, e.g. --notify-url-file /etc/pgwarden/notify/url")
    group.add_argument("--notify-format", choices=[f.value for f in Format], default=Format.JSON.value,
                       help="json: {\"event\", \"text\", \"source\", \"time\", \"details\"}; slack: an incoming "
                            "webhook's {\"text\": ...} (default json), e.g. --notify-format slack")
    group.add_argument("--notify-timeout", metavar="SECONDS", type=_positive, default=ATTEMPT_TIMEOUT_S,
                       help=f"give up one attempt after this long (default {ATTEMPT_TIMEOUT_S:g})")
    group.add_argument("--notify-queue", metavar="N", type=int, default=QUEUE_SIZE,
                       help=f"events waiting at most; more are dropped (default {QUEUE_SIZE})")


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above 0, got {text!r}")
    return value


def _read_url_file(text: str) -> str:
    """argparse type: the file's first non-empty line, checked; errors name the file, never the URL."""
    path = Path(text)
    try:
        data = path.read_bytes()[: MAX_STATE_FILE_BYTES + 1]
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {path}: {exc.strerror or type(exc).__name__}") from exc
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    if not lines:
        raise argparse.ArgumentTypeError(f"{path} is empty: write the webhook URL on its first line")
    return _checked_url(lines[0], where=str(path))


def _checked_url(url: str, *, where: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{where}: not an http:// or https:// URL with a host")
    return url


def webhook_settings_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> WebhookSettings | None:
    """The webhook of --notify-url-file, else $PGWARDEN_NOTIFY_URL, else None (no notifications)."""
    env = os.environ if environ is None else environ
    url = getattr(args, "notify_url", None)
    if url is None and env.get(URL_ENV):
        url = _checked_url(env[URL_ENV], where=f"${URL_ENV}")
    if url is None:
        return None
    return WebhookSettings(url=url, format=Format(args.notify_format), queue_size=max(1, args.notify_queue),
                           attempt_timeout_s=args.notify_timeout)
