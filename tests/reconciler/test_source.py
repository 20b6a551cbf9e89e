"""The source stage against real git repositories: a bare "remote" plus a clone we commit to."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconciler.errors import ManifestErrors
from reconciler.source import GitSource, Revision, SourceError, SourceSpec, UntrustedRevision, mask_url

DB_YAML = "kind: Group\nmetadata: {name: engineering}\n"


def git(cwd: Path, *args: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        ["git", *args], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


class Upstream:
    """A bare repository (the remote) and a work tree that commits and pushes to it."""

    def __init__(self, root: Path) -> None:
        self.bare = root / "remote.git"
        self.work = root / "work"
        root.mkdir(parents=True)
        git(root, "init", "--quiet", "--bare", "--initial-branch=main", str(self.bare))
        git(root, "clone", "--quiet", str(self.bare), str(self.work))
        for key, value in [
            ("user.name", "Test Author"),
            ("user.email", "author@example.com"),
            ("commit.gpgsign", "false"),
            ("tag.gpgsign", "false"),
        ]:
            git(self.work, "config", key, value)
        git(self.work, "checkout", "--quiet", "-B", "main")

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(
        self, files: dict[str, str], message: str = "change", *, push: bool = True, signer: Signer | None = None
    ) -> str:
        for rel, text in files.items():
            (self.work / rel).parent.mkdir(parents=True, exist_ok=True)
            (self.work / rel).write_text(text)
        git(self.work, "add", "--all")
        if signer is None:
            git(self.work, "commit", "--quiet", "-m", message)
        else:
            git(
                self.work,
                "-c",
                f"user.signingkey={signer.fingerprint}",
                "commit",
                "--quiet",
                "-S",
                "-m",
                message,
                env={"GNUPGHOME": str(signer.home)},
            )
        if push:
            git(self.work, "push", "--quiet", "origin", "HEAD:main")
        return git(self.work, "rev-parse", "HEAD")

    def tag(self, name: str) -> None:
        git(self.work, "tag", "-a", "-m", name, name)  # annotated: the source must peel it to the commit
        git(self.work, "push", "--quiet", "origin", name)


@pytest.fixture
def upstream(tmp_path: Path) -> Upstream:
    repo = Upstream(tmp_path / "upstream")
    repo.commit({"manifests/db.yaml": DB_YAML, "README.md": "manifests\n"}, "first")
    return repo


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def source_for(url: str, cache: Path, **options: object) -> GitSource:
    return GitSource(SourceSpec(url=url, **options), cache)  # type: ignore[arg-type]


# --- fetching -------------------------------------------------------------------------------------------


async def test_follows_the_default_branch(upstream: Upstream, cache: Path) -> None:
    source = source_for(upstream.url, cache)
    first = await source.fetch()
    head = git(upstream.work, "rev-parse", "HEAD")
    assert (first.id, first.commit, first.ref) == (f"main@sha1:{head}", head, "main")
    assert (first.message, first.author) == ("first", "Test Author <author@example.com>")
    assert (first.root / "manifests/db.yaml").read_text() == DB_YAML

    second_commit = upstream.commit({"manifests/db.yaml": DB_YAML + "---\nkind: Group\nmetadata: {name: ops}\n"})
    second = await source.fetch()
    assert second.id == f"main@sha1:{second_commit}"
    assert "ops" in (second.root / "manifests/db.yaml").read_text()
    assert (first.root / "manifests/db.yaml").read_text() == DB_YAML  # a checkout is never rewritten
    assert source.describe() == f"{upstream.url} @ HEAD"


async def test_named_branch_and_old_checkouts_are_pruned(upstream: Upstream, cache: Path) -> None:
    source = source_for(upstream.url, cache, ref="main")
    revisions = [await source.fetch()]
    for n in range(3):
        upstream.commit({f"manifests/{n}.yaml": DB_YAML})
        revisions.append(await source.fetch())
    assert len({r.id for r in revisions}) == 4 and all(r.id.startswith("main@sha1:") for r in revisions)
    assert not revisions[0].root.exists()
    assert all(r.root.is_dir() for r in revisions[1:])


async def test_tag_pin_does_not_move(upstream: Upstream, cache: Path) -> None:
    tagged = git(upstream.work, "rev-parse", "HEAD")
    upstream.tag("v1.2.0")
    upstream.commit({"manifests/later.yaml": DB_YAML})
    source = source_for(upstream.url, cache, ref="v1.2.0")
    revision = await source.fetch()
    assert (revision.id, revision.commit, revision.ref) == (f"v1.2.0@sha1:{tagged}", tagged, "v1.2.0")
    assert not (revision.root / "manifests/later.yaml").exists()
    upstream.commit({"manifests/even-later.yaml": DB_YAML})
    assert (await source.fetch()).id == revision.id
    assert source.describe().endswith(" @ v1.2.0")


async def test_commit_pin_stays_fixed(upstream: Upstream, cache: Path) -> None:
    pinned = git(upstream.work, "rev-parse", "HEAD")
    upstream.commit({"manifests/later.yaml": DB_YAML})
    for ref in (pinned[:10], pinned):
        revision = await source_for(upstream.url, cache, ref=ref).fetch()
        assert (revision.id, revision.commit, revision.ref) == (f"sha1:{pinned}", pinned, None)
        assert not (revision.root / "manifests/later.yaml").exists()


def _objects_bytes(mirror: Path) -> int:
    return sum(f.stat().st_size for f in (mirror / "objects").rglob("*") if f.is_file())


async def test_only_the_configured_ref_is_fetched(upstream: Upstream, cache: Path) -> None:
    """A big blob on another branch (and a tag there) never lands in the cache, whichever way `ref` is named."""
    main = git(upstream.work, "rev-parse", "HEAD")
    upstream.tag("v1")
    git(upstream.work, "checkout", "--quiet", "-b", "other")
    (upstream.work / "big.bin").write_bytes(os.urandom(4 << 20))  # random: no compression can hide it
    git(upstream.work, "add", "big.bin")
    git(upstream.work, "commit", "--quiet", "-m", "big")
    git(upstream.work, "tag", "other-tag")
    git(upstream.work, "push", "--quiet", "origin", "other", "other-tag")
    big_blob = git(upstream.work, "rev-parse", "HEAD:big.bin")
    git(upstream.work, "checkout", "--quiet", "main")
    for i, ref in enumerate([None, "main", "refs/heads/main", "v1", "refs/tags/v1", main, main[:10]]):
        source = source_for(upstream.url, cache / str(i), ref=ref)
        revision = await source.fetch()
        assert revision.commit == main, ref
        [mirror] = (cache / str(i)).rglob("mirror.git")
        missing = subprocess.run(["git", f"--git-dir={mirror}", "cat-file", "-e", big_blob], capture_output=True)
        assert missing.returncode != 0, f"ref {ref!r}: the other branch's blob is in the cache"
        assert _objects_bytes(mirror) < 1 << 20, ref
        refs = git(mirror, f"--git-dir={mirror}", "for-each-ref", "--format=%(refname)")
        assert "other" not in refs, (ref, refs)


async def test_the_other_branch_is_fetched_when_it_is_the_ref(upstream: Upstream, cache: Path) -> None:
    git(upstream.work, "checkout", "--quiet", "-b", "feature")
    tip = upstream.commit({"manifests/feature.yaml": DB_YAML}, push=False)
    git(upstream.work, "push", "--quiet", "origin", "feature")
    revision = await source_for(upstream.url, cache, ref="feature").fetch()
    assert (revision.commit, revision.ref) == (tip, "feature")
    assert (revision.root / "manifests/feature.yaml").is_file()


async def test_path_selects_a_subdirectory(upstream: Upstream, cache: Path) -> None:
    revision = await source_for(upstream.url, cache, path="manifests").fetch()
    assert revision.root.name == "manifests" and (revision.root / "db.yaml").is_file()
    assert not (revision.root / "README.md").exists()


async def test_path_symlink_leaving_the_checkout_is_refused(upstream: Upstream, cache: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (upstream.work / "linked").symlink_to(tmp_path / "elsewhere")
    upstream.commit({})
    with pytest.raises(ManifestErrors, match="outside the repository"):
        await source_for(upstream.url, cache, path="linked").fetch()


def test_spec_refuses_what_can_never_work() -> None:
    for bad in (
        {"path": "../etc"},
        {"path": "/etc"},
        {"ref": "--upload-pack=x"},
        {"jitter": 1.0},
        {"poll_interval_s": 0},
        {"verify_signatures": True},
    ):
        with pytest.raises(ValueError):
            SourceSpec(url="file:///x", **bad)  # type: ignore[arg-type]


async def test_unknown_ref_is_a_source_error(upstream: Upstream, cache: Path) -> None:
    with pytest.raises(SourceError, match="no branch, tag or commit 'nope'"):
        await source_for(upstream.url, cache, ref="nope").fetch()


async def test_local_plain_directory_is_served_as_is(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain/db.yaml").write_text(DB_YAML)
    source = source_for(str(tmp_path / "plain"), cache)
    first = await source.fetch()
    assert first.id.startswith("dir:") and len(first.id) == len("dir:") + 12
    assert (first.commit, first.ref, first.root) == (None, None, tmp_path / "plain")
    (tmp_path / "plain/db.yaml").write_text(DB_YAML + "# edited\n")
    assert (await source.fetch()).id != first.id
    assert source.describe() == f"{tmp_path / 'plain'} (directory)"


async def test_local_work_tree_serves_commits_not_edits(upstream: Upstream, cache: Path) -> None:
    source = source_for(str(upstream.work), cache)
    first = await source.fetch()
    assert first.id == f"main@sha1:{git(upstream.work, 'rev-parse', 'HEAD')}"

    (upstream.work / "manifests/db.yaml").write_text("uncommitted: true\n")
    unchanged = await source.fetch()
    assert unchanged.id == first.id
    assert (unchanged.root / "manifests/db.yaml").read_text() == DB_YAML

    committed = upstream.commit({}, "local commit", push=False)
    assert (await source.fetch()).id == f"main@sha1:{committed}"
    assert git(upstream.work, "status", "--porcelain") == ""  # the user's tree and branch are as they left them
    assert git(upstream.work, "rev-parse", "HEAD") == committed


# --- errors name the place, never the credential -------------------------------------------------------


async def test_unreachable_url_is_a_source_error_without_the_password(cache: Path) -> None:
    source = source_for("https://user:s3cret@127.0.0.1:9/x.git", cache, fetch_timeout_s=10)
    with pytest.raises(SourceError) as caught:
        await source.fetch()
    text = f"{caught.value} {caught.value.hint} {source.describe()}"
    assert "127.0.0.1:9" in str(caught.value)
    assert "s3cret" not in text and "user:" not in text


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield server.getsockname()[1]


async def test_fetch_timeout_is_a_source_error(silent_server: int, cache: Path) -> None:
    source = source_for(f"http://127.0.0.1:{silent_server}/x.git", cache, fetch_timeout_s=0.5)
    started = asyncio.get_running_loop().time()
    with pytest.raises(SourceError, match="timed out after 0.5 s"):
        await source.fetch()
    assert asyncio.get_running_loop().time() - started < 3


def test_mask_url() -> None:
    assert mask_url("https://user:pw@host/x.git") == "https://***@host/x.git"
    assert mask_url("https://ghp_token@host/x.git") == "https://***@host/x.git"
    assert mask_url("ssh://git@host/x.git") == "ssh://git@host/x.git"
    assert mask_url("git@github.com:org/x.git") == "git@github.com:org/x.git"
    assert mask_url("'ssh://me:pw@host/x' failed") == "'ssh://***@host/x' failed"


# --- when to fetch again -------------------------------------------------------------------------------


async def next_change(changes: AsyncIterator[None], within_s: float) -> float:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(within_s):
        await anext(changes)
    return loop.time() - started


async def test_changes_on_trigger_and_on_poll(upstream: Upstream, cache: Path) -> None:
    source = source_for(upstream.url, cache, poll_interval_s=0.3, jitter=0.0)
    async with contextlib.aclosing(source.changes()) as changes:
        assert 0.25 < await next_change(changes, within_s=1.0) < 0.8  # the poll interval
        waiting = asyncio.ensure_future(next_change(changes, within_s=0.2))
        await asyncio.sleep(0.05)
        source.trigger()
        await waiting
        waiting = asyncio.ensure_future(next_change(changes, within_s=0.2))
        await asyncio.sleep(0.05)
        await asyncio.to_thread(source.trigger)  # e.g. a webhook served on another thread
        await waiting


async def test_changes_on_a_local_commit_not_on_an_edit(upstream: Upstream, cache: Path) -> None:
    source = source_for(str(upstream.work), cache, poll_interval_s=30)
    async with contextlib.aclosing(source.changes()) as changes:
        waiting = asyncio.ensure_future(next_change(changes, within_s=2.5))
        await asyncio.sleep(0.3)  # let the watcher start
        (upstream.work / "manifests/db.yaml").write_text("uncommitted: true\n")
        await asyncio.sleep(0.4)
        assert not waiting.done()  # an edit does not change what is served
        git(upstream.work, "commit", "--quiet", "-am", "local commit")
        committed_at = asyncio.get_running_loop().time()
        await waiting
        assert asyncio.get_running_loop().time() - committed_at < 1.5


async def test_changes_on_a_local_directory_edit(tmp_path: Path, cache: Path) -> None:
    (tmp_path / "plain").mkdir()
    source = source_for(str(tmp_path / "plain"), cache, poll_interval_s=30)
    async with contextlib.aclosing(source.changes()) as changes:
        waiting = asyncio.ensure_future(next_change(changes, within_s=1.5))
        await asyncio.sleep(0.3)
        (tmp_path / "plain/db.yaml").write_text(DB_YAML)
        await waiting


# --- signature verification ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Signer:
    home: Path
    fingerprint: str
    public_key: Path


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Signer, Signer]]:
    """Two unprotected test keys in one GNUPGHOME: the trusted one and another."""
    # .ci/run installs gnupg; a machine without it must fail here, not skip signature checks silently.
    assert shutil.which("gpg") is not None, "gpg is not installed (apt-get install gnupg)"
    home = tmp_path_factory.mktemp("gpg")
    home.chmod(0o700)
    env = {"GNUPGHOME": str(home)}
    made = []
    for name in ("trusted", "other"):
        uid = f"{name} <{name}@example.com>"
        subprocess.run(
            [
                "gpg",
                "--batch",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                "--quick-gen-key",
                uid,
                "ed25519",
                "sign",
                "never",
            ],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        listing = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--list-keys", uid],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
        public_key = home / f"{name}.asc"
        public_key.write_bytes(
            subprocess.run(
                ["gpg", "--batch", "--armor", "--export", fingerprint],
                env={**os.environ, **env},
                check=True,
                capture_output=True,
            ).stdout
        )
        made.append(Signer(home=home, fingerprint=fingerprint, public_key=public_key))
    yield made[0], made[1]
    subprocess.run(["gpgconf", "--kill", "gpg-agent"], env={**os.environ, **env}, check=False, capture_output=True)


async def verified_fetch(upstream: Upstream, cache: Path, trusted: Signer) -> Revision:
    return await source_for(upstream.url, cache, verify_signatures=True, trusted_keys=(trusted.public_key,)).fetch()


async def test_commit_signed_by_a_trusted_key_is_accepted(
    upstream: Upstream, cache: Path, signers: tuple[Signer, Signer]
) -> None:
    trusted, _ = signers
    commit = upstream.commit({"manifests/signed.yaml": DB_YAML}, signer=trusted)
    assert (await verified_fetch(upstream, cache, trusted)).commit == commit


async def test_unsigned_commit_is_refused(upstream: Upstream, cache: Path, signers: tuple[Signer, Signer]) -> None:
    commit = git(upstream.work, "rev-parse", "HEAD")
    with pytest.raises(UntrustedRevision, match=f"commit {commit} is refused: it is not signed") as caught:
        await verified_fetch(upstream, cache, signers[0])
    assert (caught.value.commit, caught.value.revision) == (commit, f"main@sha1:{commit}")
    assert not list(cache.glob("*/trees/*"))  # refused before anything was checked out


async def test_commit_signed_by_another_key_is_refused(
    upstream: Upstream, cache: Path, signers: tuple[Signer, Signer]
) -> None:
    trusted, other = signers
    upstream.commit({"manifests/signed.yaml": DB_YAML}, signer=other)
    with pytest.raises(UntrustedRevision, match="not signed by a trusted key"):
        await verified_fetch(upstream, cache, trusted)
