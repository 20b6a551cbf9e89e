"""`pgwarden up --notify-url-file`: events reach a real webhook receiver, retried, and never hold up reconciling."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.gitops import ManifestRepo, UpProcess
from tests.support.webhook_receiver import WebhookReceiver

BAD_USER = "kind: User\nmetadata: {name: eve}\nspec: {type: NOT_A_TYPE}\n"


@pytest.fixture
def repo(pg: Any, tmp_path: Path) -> ManifestRepo:
    r = ManifestRepo(tmp_path, pg)
    r.write_defaults()
    r.commit("initial")
    return r


@pytest.fixture
def receivers() -> Iterator[list[WebhookReceiver]]:
    started: list[WebhookReceiver] = []
    yield started
    for receiver in started:
        receiver.stop()


def start_up(repo: ManifestRepo, tmp_path: Path, receiver: WebhookReceiver, *extra: str) -> UpProcess:
    url_file = tmp_path / "notify-url"
    url_file.write_text(receiver.url + "\n")
    url_file.chmod(0o600)
    return UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600",
                     "--notify-url-file", str(url_file), *extra)


def notification_counts(up: UpProcess) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{up.http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {s.labels["result"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "pgwarden_notifications_total"}


def commit_and_reconcile(up: UpProcess, repo: ManifestRepo, message: str) -> str:
    commit = repo.commit(message)
    up.cli("reconcile", "--with-source")
    return commit


def kinds(bodies: list[dict[str, Any]]) -> list[str]:
    return [b.get("event", "") for b in bodies]


def test_stalled_recovered_upstream_and_revocation_events_as_json(
    repo: ManifestRepo, tmp_path: Path, receivers: list[WebhookReceiver], leak_guard: Any,
) -> None:
    receiver = WebhookReceiver().start()
    receivers.append(receiver)
    up = start_up(repo, tmp_path, receiver)
    try:
        repo.write("extra.yaml", BAD_USER)
        bad = commit_and_reconcile(up, repo, "bad user type")
        up.wait_attempted(bad)
        stalled = receiver.wait_for(lambda b: "Stalled" in kinds(b))[-1]
        assert stalled["details"]["revision"].endswith(bad) and stalled["details"]["reason"] == "ValidationFailed"
        assert "extra.yaml" in "\n".join(stalled["details"]["errors"])
        assert stalled["source"].startswith("file://") and stalled["text"].startswith("Stalled (ValidationFailed)")

        (repo.root / "extra.yaml").unlink()
        good = commit_and_reconcile(up, repo, "fix")
        up.wait_applied(good)
        recovered = receiver.wait_for(lambda b: "Recovered" in kinds(b))[-1]
        assert recovered["details"]["revision"].endswith(good)

        repo.write_secret("full-access-password", "not-the-password")
        commit_and_reconcile(up, repo, "wrong upstream password")
        unhealthy = receiver.wait_for(lambda b: "UpstreamUnhealthy" in kinds(b))[-1]
        assert list(unhealthy["details"]["configs"]) == ["my-db/full-access"]
        repo.write_defaults()
        commit_and_reconcile(up, repo, "right password again")
        assert receiver.wait_for(lambda b: "UpstreamRecovered" in kinds(b))[-1]["details"]["configs"] == \
            ["my-db/full-access"]

        up.token("alice")
        revoked_out = up.cli("sessions", "revoke", "--user", "alice")
        assert revoked_out.returncode == 0, revoked_out.stderr
        revoked = receiver.wait_for(lambda b: "SessionsRevoked" in kinds(b))[-1]
        assert revoked["details"]["user"] == "alice" and len(revoked["details"]["sessions"]) == 1

        assert kinds(receiver.delivered()) == ["Stalled", "Recovered", "UpstreamUnhealthy", "UpstreamRecovered",
                                               "SessionsRevoked"]
        assert notification_counts(up) == {"delivered": 5, "retried": 0, "failed": 0, "dropped": 0}
    finally:
        output = up.stop()
    # The URL's token is a credential: not in the logs, not in status.
    assert receiver.token not in output
    assert receiver.token not in (tmp_path / "data" / "status.json").read_text()
    leak_guard.check(output, "pgwarden up output")


def test_slack_shape_delivered_after_two_failures_with_workers(
    repo: ManifestRepo, tmp_path: Path, receivers: list[WebhookReceiver],
) -> None:
    # With --workers the parent's admin API revokes and notifies; the workers only end connections.
    receiver = WebhookReceiver(fail_first=2).start()
    receivers.append(receiver)
    up = start_up(repo, tmp_path, receiver, "--notify-format", "slack", "--workers", "2")
    try:
        up.token("bob")
        assert up.cli("sessions", "revoke", "--user", "bob").returncode == 0
        delivered = receiver.wait_for(lambda b: len(b) == 1)
        assert [status for status, _ in receiver.attempts] == [500, 500, 200]
        assert list(delivered[0]) == ["text"], "Slack's incoming webhooks take {\"text\": ...}"
        assert "revoked all 1 sessions of bob" in delivered[0]["text"]
        assert notification_counts(up) == {"delivered": 1, "retried": 2, "failed": 0, "dropped": 0}
    finally:
        output = up.stop()
    assert receiver.token not in output


def test_a_hanging_receiver_never_holds_up_reconciling(
    repo: ManifestRepo, tmp_path: Path, receivers: list[WebhookReceiver],
) -> None:
    receiver = WebhookReceiver(hang=True).start()
    receivers.append(receiver)
    up = start_up(repo, tmp_path, receiver, "--notify-queue", "1", "--notify-timeout", "120")
    try:
        for round_ in range(2):
            repo.write("extra.yaml", BAD_USER)
            up.wait_attempted(commit_and_reconcile(up, repo, f"bad {round_}"))
            (repo.root / "extra.yaml").unlink()
            up.wait_applied(commit_and_reconcile(up, repo, f"good {round_}"))  # live while the receiver hangs
        assert len(receiver.wait_for(lambda b: len(b) == 1, hung=True)) == 1  # the first Stalled, still hanging
        counts = notification_counts(up)
        # Stalled hangs in flight, one Recovered waits in the queue of 1; the next Stalled and Recovered drop.
        assert counts["dropped"] == 2 and counts["delivered"] == 0
    finally:
        up.stop()
