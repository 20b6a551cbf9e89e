"""GitOps end to end: commits go live by poll, watch and webhook; bad commits change nothing live."""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.gitops import ManifestRepo, UpProcess

WEBHOOK_SECRET = "hook-secret-for-tests"


@pytest.fixture
def repo(pg: Any, tmp_path: Path) -> ManifestRepo:
    r = ManifestRepo(tmp_path, pg)
    r.write_defaults()
    r.commit("initial")
    return r


@pytest.fixture
def up(repo: ManifestRepo, tmp_path: Path, leak_guard: Any) -> Iterator[UpProcess]:
    process = UpProcess(repo.url, tmp_path / "data", "--age-key-file", str(repo.key_file), "--poll-interval", "3600",
                        env={"PGWARDEN_WEBHOOK_SECRET": WEBHOOK_SECRET})
    yield process
    output = process.stop()
    leak_guard.check(output, "pgwarden up output, status and CLI output")
    leak_guard.check((tmp_path / "data" / "status.json").read_text(), "status.json")
    leak_guard.check((tmp_path / "data" / "access.log").read_text(), "access log")


def post_hook(up: UpProcess, body: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{up.http_port}/hooks/git", data=body, headers=headers,
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code


def signature(body: bytes) -> str:
    return "sha256=" + hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).hexdigest()


def test_signed_webhook_makes_a_commit_live_and_unsigned_is_rejected(up: UpProcess, repo: ManifestRepo) -> None:
    repo.write_defaults(note="v2")
    commit = repo.commit("change an unrelated service")
    body = b'{"ref": "refs/heads/main"}'
    assert post_hook(up, body, {"X-Hub-Signature-256": "sha256=" + "0" * 64}) in (401, 403)
    assert post_hook(up, body, {}) in (401, 403)
    time.sleep(0.5)
    assert not up.status()["last_applied_revision"].endswith(commit)
    started = time.monotonic()
    assert post_hook(up, body, {"X-Hub-Signature-256": signature(body), "X-GitHub-Event": "push"}) == 202
    up.wait_applied(commit)
    print(f"webhook → live: {time.monotonic() - started:.2f} s")


def test_commit_goes_live_by_poll(repo: ManifestRepo, tmp_path: Path) -> None:
    up = UpProcess(repo.url, tmp_path / "poll", "--age-key-file", str(repo.key_file), "--poll-interval", "1")
    try:
        repo.write_defaults(note="polled")
        commit = repo.commit("polled change")
        elapsed = up.wait_applied(commit, timeout_s=10)
        print(f"poll (1 s interval) → live: {elapsed:.2f} s")
    finally:
        up.stop()


def test_commit_in_a_watched_local_repo_goes_live(repo: ManifestRepo, tmp_path: Path) -> None:
    up = UpProcess(str(repo.root), tmp_path / "watch", "--age-key-file", str(repo.key_file), "--poll-interval", "3600")
    try:
        repo.write_defaults(note="watched")
        commit = repo.commit("local commit", push=False)
        elapsed = up.wait_applied(commit, timeout_s=5)
        print(f"watch → live: {elapsed:.2f} s")
        assert elapsed < 5
    finally:
        up.stop()


BAD_COMMITS = {
    "schema error": ("people.yaml", "kind: User\nmetadata: {name: alice}\nspec: {type: ROBOT}\n", "people.yaml"),
    "bad CEL": ("extra.yaml", "kind: Service\nmetadata: {name: x}\nspec:\n  mode: POSTGRES\n  config:\n"
                "    upstream: {url: 'postgres://127.0.0.1:1'}\n  dynamicConfig:\n    rules:\n"
                "      - condition: {match: 'ctx.user.spec.groups.hasAny('}\n        configName: default\n",
                "extra.yaml"),
    "dangling fromSecret": ("extra.yaml", "kind: Service\nmetadata: {name: x}\nspec:\n  mode: POSTGRES\n  config:\n"
                            "    upstream: {url: 'postgres://127.0.0.1:1'}\n"
                            "    postgres: {auth: {password: {fromSecret: nope}}}\n", "fromSecret"),
}


@pytest.mark.parametrize("case", sorted(BAD_COMMITS))
def test_bad_commit_changes_nothing_live_and_next_good_commit_recovers(
    case: str, up: UpProcess, repo: ManifestRepo
) -> None:
    file, text, expected = BAD_COMMITS[case]
    before = up.status()
    with psycopg.connect(up.dsn("alice")) as session:
        session.execute("BEGIN")
        session.execute("INSERT INTO items(name) VALUES ('during a bad commit')")
        repo.write(file, text)
        bad = repo.commit(f"bad: {case}")
        up.cli("reconcile", "--with-source")
        status = up.wait_attempted(bad)
        assert status["generation"] == before["generation"]
        assert status["last_applied_revision"] == before["last_applied_revision"]
        stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
        assert stalled["status"] == "True" and stalled["reason"] == "ValidationFailed"
        assert expected in "\n".join(status["history"][0]["errors"])
        assert up.cli("status").returncode == 1
        session.execute("COMMIT")  # the session kept working through the bad revision
    repo.write_defaults()
    (repo.root / "extra.yaml").unlink(missing_ok=True)
    good = repo.commit("fix")
    up.cli("reconcile", "--with-source")
    up.wait_applied(good)
    assert up.cli("status").returncode == 0


@pytest.mark.parametrize("case", ["tampered MAC", "unknown age recipient"])
def test_undecryptable_secret_is_refused(case: str, up: UpProcess, repo: ManifestRepo) -> None:
    path = repo.root / "secrets" / "read-only-password.yaml"
    if case == "tampered MAC":
        text = path.read_text()
        path.write_text(text.replace("mac: ENC[AES256_GCM,data:", "mac: ENC[AES256_GCM,data:AAAA", 1))
    else:
        stranger = str(__import__("pyrage").x25519.Identity.generate().to_public())
        repo.write_secret("read-only-password", "rotated-value", recipient=stranger)
    bad = repo.commit(case)
    up.cli("reconcile", "--with-source")
    status = up.wait_attempted(bad)
    assert status["history"][0]["reason"] == "DecryptionFailed"
    assert "read-only-password.yaml" in "\n".join(status["history"][0]["errors"])
    assert not status["last_applied_revision"].endswith(bad)


def test_session_survives_50_reloads_and_group_removal_ends_it(up: UpProcess, repo: ManifestRepo) -> None:
    with psycopg.connect(up.dsn("alice")) as alice, psycopg.connect(up.dsn("bob")) as bob:
        alice.execute("BEGIN")
        alice.execute("INSERT INTO items(name) VALUES ('across 50 reloads')")
        generation = up.status()["generation"]
        for i in range(50):
            repo.write_defaults(note=f"reload {i}")
            commit = repo.commit(f"unrelated change {i}")
            up.cli("reconcile", "--with-source") if i == 0 else _trigger(up)
            up.wait_applied(commit)
        assert up.status()["generation"] >= generation + 50
        alice.execute("COMMIT")
        assert alice.execute("SELECT current_user").fetchone() == ("full_access",)
        repo.write_defaults(alice_groups="")
        commit = repo.commit("alice leaves admins")
        _trigger(up)
        up.wait_applied(commit)
        with pytest.raises(psycopg.Error, match="routing changed") as err:
            time.sleep(0.3)
            alice.execute("SELECT 1")
        assert err.value.diag.severity_nonlocalized == "FATAL"
        assert bob.execute("SELECT current_user").fetchone() == ("read_only",)


def _trigger(up: UpProcess) -> None:
    # The admin API directly: a `pgwarden reconcile` process per commit would only add start-up time.
    from pgwarden.adminclient import call

    call(up.data_dir / "admin.sock", "POST", "/v1/reconcile?withSource=1")


def test_removed_objects_are_pruned_and_empty_revision_refused(up: UpProcess, repo: ManifestRepo) -> None:
    (repo.root / "services.yaml").write_text(
        (repo.root / "services.yaml").read_text().split("---\nkind: Service\nmetadata: {name: other}")[0])
    commit = repo.commit("remove service other")
    _trigger(up)
    up.wait_applied(commit)
    status = up.status()
    assert status["objects"]["Service"] == ["my-db"]
    for path in list(repo.root.glob("*.yaml")) + list(repo.root.glob("secrets/*.yaml")):
        path.unlink()
    empty = repo.commit("delete everything")
    _trigger(up)
    status = up.wait_attempted(empty)
    assert status["history"][0]["reason"] == "EmptyRevisionRefused"  # issue 14: not a prune failure
    assert status["objects"]["Service"] == ["my-db"]  # still live


def test_pinned_tag_does_not_follow_the_branch(repo: ManifestRepo, tmp_path: Path) -> None:
    repo.work.create_tag("v1")
    repo.work.git.push("origin", "v1")
    tagged = repo.work.head.commit.hexsha
    up = UpProcess(repo.url, tmp_path / "tag", "--ref", "v1", "--age-key-file", str(repo.key_file),
                   "--poll-interval", "3600")
    try:
        up.wait_applied(tagged)
        repo.write_defaults(note="after the tag")
        repo.commit("later")
        _trigger(up)
        time.sleep(1.0)
        assert up.status()["last_applied_revision"].endswith(tagged)
    finally:
        up.stop()


def test_suspend_holds_changes_until_resume(up: UpProcess, repo: ManifestRepo) -> None:
    assert up.cli("suspend").returncode == 0
    repo.write_defaults(note="while suspended")
    commit = repo.commit("while suspended")
    _trigger(up)
    time.sleep(1.0)
    assert not up.status()["last_applied_revision"].endswith(commit)
    assert up.cli("status").returncode == 1
    assert up.cli("resume").returncode == 0
    up.wait_applied(commit)


def test_metrics_on_the_admin_api(up: UpProcess) -> None:
    from pgwarden.adminclient import call

    code, body = call(up.data_dir / "admin.sock", "GET", "/metrics")
    assert code == 200
    assert "pgwarden_reconcile_total" in body and "pgwarden_live_generation" in body
