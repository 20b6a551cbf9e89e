"""The source stage: a Git URL or local path → a Revision checked out under the cache. The loop's only git I/O.

Also says when to look again: each poll interval (with jitter), on trigger() (webhook, CLI), on a local commit
(local_watch.py); signed commits are checked against a keyring of trusted keys (signatures.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import re
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import git
import watchfiles

from reconciler import load
from reconciler.errors import ManifestSyntaxError, ReconcileError, SourceRef, Terminal, UnreadableManifests
from reconciler.local_watch import is_git_repo, watch_plan
from reconciler.signatures import KeyringError, TrustedKeyring, signature_problem

log = logging.getLogger("pgwarden.source")

KEEP_TREES = 3  # checked-out commits kept on disk: the live one, the one being loaded, one spare
WATCH_DEBOUNCE_MS = 100
# A user@host:path scp-like address; anything else without "://" is a local path.
_SCP_LIKE = re.compile(r"^[^/:@\s]+@[^/:\s]+:")
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/\s]*)@")
_HEX = re.compile(r"[0-9a-f]{4,40}")
_BAD_REF = re.compile(r"^-|[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{")  # git check-ref-format, and no options
# No credential prompt can be answered by a daemon; without this, git waits on a tty until the timeout.
_GIT_ENV = {"GIT_TERMINAL_PROMPT": "0", "GCM_INTERACTIVE": "never"}


class SourceError(ReconcileError):
    """Transient: the source could not be fetched (network, timeout, credentials, missing ref). Retried."""


class UntrustedRevision(Terminal, ReconcileError):
    """Terminal: the commit is unsigned or not signed by a trusted key. Stalled until a new revision."""

    def __init__(self, message: str, *, revision: str, commit: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.revision = revision  # the Revision.id it would have had
        self.commit = commit


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceSpec:
    """Where the manifests live and how often to look. Raises ValueError on a spec that can never work."""

    url: str  # file://, https://, ssh:// or user@host:path; or a local path (a git work tree or a plain directory)
    ref: str | None = None  # branch, tag or commit; None: the remote's default branch (its HEAD)
    path: str = "."  # sub-directory holding the manifests
    poll_interval_s: float = 60.0
    jitter: float = 0.1  # ± fraction of the interval, so many replicas do not poll in step
    fetch_timeout_s: float = 60.0
    verify_signatures: bool = False
    trusted_keys: tuple[Path, ...] = ()  # armored OpenPGP public keys

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("source url is empty")
        if self.ref is not None and (not self.ref or _BAD_REF.search(self.ref)):
            raise ValueError(f"ref {self.ref!r} is not a valid branch, tag or commit name")
        path = PurePosixPath(self.path)
        if path.is_absolute() or ".." in path.parts:
            raise ValueError(f"path {self.path!r} must be relative and stay inside the repository")
        if self.poll_interval_s <= 0 or self.fetch_timeout_s <= 0 or not 0 <= self.jitter < 1:
            raise ValueError("poll_interval_s and fetch_timeout_s must be positive, jitter in [0, 1)")
        if self.verify_signatures and not self.trusted_keys:
            raise ValueError("verify_signatures needs at least one trusted key")


@dataclass(frozen=True, slots=True, kw_only=True)
class Revision:
    """One fetched state of the source, ready to load from `root`."""

    id: str  # "main@sha1:<40 hex>" (Flux style), "sha1:<40 hex>" for a pinned commit, "dir:<12 hex>" for a directory
    commit: str | None
    ref: str | None  # the branch or tag followed; None for a pinned commit or a directory
    root: Path  # the manifest directory: the checkout joined with spec.path
    message: str = ""  # commit subject
    author: str = ""  # "Name <email>"


def mask_url(text: str) -> str:
    """Hide the user:password@ (or token@) of every URL in `text`; an ssh user name such as git@ stays."""

    def mask(m: re.Match[str]) -> str:
        userinfo, scheme = m["userinfo"], m["scheme"]
        if ":" in userinfo or scheme.lower().startswith("http"):  # a lone https user is often a token
            return f"{scheme}***@"
        return m[0]

    return _USERINFO.sub(mask, text)


class GitSource:
    """One manifest source. Mutable on purpose: it owns a cache directory, a wake-up event and a lock."""

    def __init__(self, spec: SourceSpec, cache_dir: Path) -> None:
        self.spec = spec
        is_remote = "://" in spec.url or bool(_SCP_LIKE.match(spec.url))
        self._local = None if is_remote else Path(spec.url).expanduser().resolve()
        where = spec.url if self._local is None else str(self._local)
        self._dir = cache_dir / f"source-{hashlib.sha256(where.encode()).hexdigest()[:16]}"
        self._secrets = _url_secrets(spec.url)
        self._lock = threading.Lock()  # a fetch that timed out may still be running in its thread
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._trees: list[str] = []
        self._keyring = TrustedKeyring(spec.trusted_keys, self._dir, timeout_s=spec.fetch_timeout_s)
        self._has_remote = False

    def describe(self) -> str:
        """`file:///srv/manifests @ main` for status and logs; credentials in the URL are masked."""
        if self._local is None:
            return f"{mask_url(self.spec.url)} @ {self.spec.ref or 'HEAD'}"
        if is_git_repo(self._local):
            return f"{self._local.as_uri()} @ {self.spec.ref or 'HEAD'}"
        return f"{self._local} (directory)"

    async def fetch(self) -> Revision:
        """Fetch and check out the pinned ref. Raises SourceError, UntrustedRevision, or ManifestErrors for a
        `path` that leaves the repository."""
        try:
            async with asyncio.timeout(self.spec.fetch_timeout_s):
                return await asyncio.to_thread(self._fetch_blocking)
        except TimeoutError:
            raise SourceError(
                f"cannot fetch {self.describe()}: timed out after {self.spec.fetch_timeout_s:g} s",
                hint="check that the host is reachable; pgwarden retries",
            ) from None

    def trigger(self) -> None:
        """Make changes() yield now (webhook, `pgwarden reconcile --with-source`). Safe from any thread."""
        loop = self._loop
        if loop is None or _running_loop() is loop:
            self._wake.set()
        else:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
                loop.call_soon_threadsafe(self._wake.set)

    async def changes(self) -> AsyncIterator[None]:
        """Yield whenever the source may have changed: poll interval, trigger(), or a change under a local path.

        Does not yield at start. One consumer; stop it with aclose() or by cancelling its task.
        """
        self._loop = asyncio.get_running_loop()
        stop = threading.Event()  # watchfiles' thread checks it every step; cancelling alone waits up to 5 s
        watcher = asyncio.create_task(self._watch(stop)) if self._local is not None else None
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._next_poll_s()):
                        await self._wake.wait()
                self._wake.clear()
                yield
        finally:
            if watcher is not None:
                stop.set()
                watcher.cancel()
                await asyncio.wait({watcher}, timeout=1.0)

    # --- fetching (in a worker thread) ---------------------------------------------------------------------

    def _fetch_blocking(self) -> Revision:
        try:
            with self._lock:
                return self._fetch_locked()
        except OSError as exc:  # the cache directory: permissions, a full disk
            raise SourceError(
                f"cannot fetch {self.describe()}: cache {self._dir}: {exc.strerror or type(exc).__name__}"
            ) from exc

    def _fetch_locked(self) -> Revision:
        if self._local is not None and not is_git_repo(self._local):
            return self._serve_directory(self._local)
        mirror = self._mirror()
        ref, commit = self._fetch_ref(mirror)
        revision_id = f"{ref}@sha1:{commit}" if ref else f"sha1:{commit}"
        if self.spec.verify_signatures:
            self._verify(mirror, commit, revision_id)  # before checkout: unverified bytes never reach disk
        tree = self._checkout(mirror, commit)
        subject, _, author = self._git(mirror, "log", "-1", "--format=%s%x00%an <%ae>", commit).partition("\0")
        return Revision(
            id=revision_id, commit=commit, ref=ref, root=_root(tree, self.spec.path), message=subject, author=author
        )

    def _serve_directory(self, base: Path) -> Revision:
        if not base.is_dir():
            raise SourceError(f"cannot read {base}: not a directory", hint="create it, or fix the source path")
        root = _root(base, self.spec.path)
        files, _ = load.read_directory(root)  # refused files are reported again by the load stage
        return Revision(id=load.directory_revision(files), commit=None, ref=None, root=root)

    def _mirror(self) -> Path:
        """A bare repository under the cache whose `origin` is the source (a local work tree as file://)."""
        mirror = self._dir / "mirror.git"
        if not self._has_remote:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the remote URL may hold a credential
            if not (mirror / "HEAD").is_file():
                git.Repo.init(mirror, bare=True, mkdir=True).close()
            url = self._local.as_uri() if self._local is not None else self.spec.url
            self._git(mirror, "config", "remote.origin.url", url)
            self._has_remote = True
        return mirror

    # Only the configured ref is fetched (one refspec): objects reachable only from other branches and tags
    # (a 50 MB blob on someone's branch) never reach the cache.

    def _fetch_ref(self, mirror: Path) -> tuple[str | None, str]:
        """Fetch the configured ref alone; (the branch or tag followed, or None for a commit; its full hash)."""
        ref = self.spec.ref
        if ref is None:
            branch = self._fetch_default_branch(mirror)
            if commit := self._rev(mirror, "refs/pgwarden/HEAD"):
                return branch, commit
            raise SourceError(f"cannot fetch {self.describe()}: the repository has no commits")
        name = ref.removeprefix("refs/tags/").removeprefix("refs/heads/")
        if ref.startswith("refs/tags/"):
            candidates = [ref]
        elif ref.startswith("refs/heads/"):
            candidates = [f"refs/heads/{name}"]
        else:  # tag first, then branch, as `git rev-parse` resolves an unqualified name
            candidates = [f"refs/tags/{name}", f"refs/heads/{name}"]
        advertised = self._advertised(mirror, candidates)
        for remote_ref in candidates:
            if remote_ref in advertised:
                local = remote_ref if remote_ref.startswith("refs/tags/") else f"refs/remotes/origin/{name}"
                self._git(mirror, "fetch", "--no-tags", "origin", f"+{remote_ref}:{local}", network=True)
                if commit := self._rev(mirror, local):
                    return name, commit
        if _HEX.fullmatch(ref):
            commit = self._rev(mirror, ref)  # fetched before
            if commit is None:
                with contextlib.suppress(SourceError):
                    if len(ref) == 40:  # a full hash can be asked for by itself
                        self._git(mirror, "fetch", "--no-tags", "origin", ref, network=True)
                    else:  # a short one only within the default branch's history
                        self._fetch_default_branch(mirror)
                commit = self._rev(mirror, ref)
            if commit is not None:
                return None, commit
        raise SourceError(
            f"cannot fetch {self.describe()}: no branch, tag or commit {ref!r} in the repository",
            hint="push the ref, or fix `ref` in the source configuration (pin a commit elsewhere than the "
                 "default branch by its full 40-character hash)",
        )

    def _fetch_default_branch(self, mirror: Path) -> str | None:
        """Fetch the remote's HEAD into refs/pgwarden/HEAD; its branch name (None for an empty repository)."""
        out = self._git(mirror, "ls-remote", "--symref", "origin", "HEAD", network=True)
        if not re.search(r"^[0-9a-f]{40,64}\s+HEAD$", out, re.MULTILINE):
            return None  # no commits yet: nothing to fetch
        self._git(mirror, "fetch", "--no-tags", "origin", "+HEAD:refs/pgwarden/HEAD", network=True)
        found = re.search(r"^ref: refs/heads/(\S+)\s+HEAD$", out, re.MULTILINE)
        return found[1] if found else "HEAD"  # a detached HEAD has no branch name

    def _advertised(self, mirror: Path, refs: list[str]) -> set[str]:
        """Which of these full ref names the remote has (ls-remote matches patterns by suffix: compare exactly)."""
        out = self._git(mirror, "ls-remote", "origin", *refs, network=True)
        return {line.split("\t", 1)[1] for line in out.splitlines() if "\t" in line} & set(refs)

    def _rev(self, mirror: Path, name: str) -> str | None:
        try:
            return self._git(mirror, "rev-parse", "--verify", "--quiet", f"{name}^{{commit}}") or None
        except SourceError:
            return None

    def _verify(self, mirror: Path, commit: str, revision_id: str) -> None:
        gnupghome = self._trusted_keyring()
        out = self._git(mirror, "log", "-1", "--format=%G?%x00%GK", commit, env={"GNUPGHOME": str(gnupghome)})
        status, _, key = out.partition("\0")
        why = signature_problem(status)
        if why is None:
            return
        raise UntrustedRevision(
            f"{self.describe()}: commit {commit} is refused: {why}" + (f" (key {key})" if key else ""),
            revision=revision_id,
            commit=commit,
            hint="sign the commit (git commit -S) with a key listed in trusted_keys",
        )

    def _trusted_keyring(self) -> Path:
        try:
            return self._keyring.home()
        except KeyringError as exc:
            raise SourceError(str(exc), hint=exc.hint) from exc

    def _checkout(self, mirror: Path, commit: str) -> Path:
        """The commit's files in trees/<commit>, written once and never changed (a load may be reading one)."""
        trees = self._dir / "trees"
        trees.mkdir(exist_ok=True)
        final = trees / commit
        if not final.is_dir():
            partial = Path(tempfile.mkdtemp(dir=trees, prefix=".partial-"))
            # A private index, so the mirror's own state is never touched.
            env = {"GIT_INDEX_FILE": f"{partial}.index", "GIT_WORK_TREE": str(partial)}
            try:
                self._git(mirror, "read-tree", commit, env=env)
                self._git(mirror, "checkout-index", "--all", "--force", env=env)
                partial.rename(final)
            finally:
                Path(f"{partial}.index").unlink(missing_ok=True)
                shutil.rmtree(partial, ignore_errors=True)
        self._trees = [t for t in self._trees if t != commit][-(KEEP_TREES - 1) :] + [commit]
        for old in trees.iterdir():
            if old.name in self._trees:
                continue
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        return final

    def _git(self, cwd: Path, *args: str, network: bool = False, env: dict[str, str] | None = None) -> str:
        """Run git; its failure becomes a SourceError naming the (masked) URL and ref, never a credential."""
        try:
            # --git-dir: a GIT_DIR inherited from a git hook must not point us at another repository.
            status, out, err = git.Git(str(cwd)).execute(
                [git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git", f"--git-dir={cwd}", *args],
                env={**_GIT_ENV, **(env or {})},
                with_extended_output=True,
                with_exceptions=False,
                kill_after_timeout=self.spec.fetch_timeout_s if network else None,
            )
        except (OSError, git.GitCommandNotFound) as exc:  # no git binary, or the cache directory vanished
            raise SourceError(f"cannot fetch {self.describe()}: cannot run git ({type(exc).__name__})") from exc
        if status == 0:
            return str(out).strip()
        if str(err).startswith("Timeout:"):  # gitpython's kill_after_timeout
            why = f"git {args[0]} timed out after {self.spec.fetch_timeout_s:g} s"
        else:
            # git's first "fatal:" line says what went wrong; the lines after it are generic advice.
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            first = next((line for line in lines if line.startswith(("fatal:", "error:"))), lines[-1] if lines else "")
            why = f"git {args[0]}: {self._redact(first[:300]) if first else f'exit status {status}'}"
        raise SourceError(
            f"cannot fetch {self.describe()}: {why}", hint="check the URL, credentials and network; pgwarden retries"
        )

    def _redact(self, text: str) -> str:
        text = mask_url(text)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    # --- watching ------------------------------------------------------------------------------------------

    def _next_poll_s(self) -> float:
        return self.spec.poll_interval_s * (1 + random.uniform(-self.spec.jitter, self.spec.jitter))

    async def _watch(self, stop: threading.Event) -> None:
        assert self._local is not None
        try:
            paths, accept = await asyncio.to_thread(watch_plan, self._local)
            async for _ in watchfiles.awatch(
                *paths, watch_filter=accept, debounce=WATCH_DEBOUNCE_MS, step=50, stop_event=stop
            ):
                self._wake.set()
        except Exception as exc:  # noqa: BLE001 - a vanished or unwatchable directory must not stop polling
            log.warning(
                "not watching %s (%s: %s); polling every %g s",
                self._local,
                type(exc).__name__,
                exc,
                self.spec.poll_interval_s,
            )

def _root(base: Path, path: str) -> Path:
    root = base / path
    if not root.resolve().is_relative_to(base.resolve()):  # load would follow it and read wherever it points
        escape = ManifestSyntaxError("symlink points outside the repository", source=SourceRef(file=path))
        raise UnreadableManifests([escape])
    return root


def _url_secrets(url: str) -> list[str]:
    """The credential parts of a URL, to scrub from git's messages even where they appear without the URL."""
    found = _USERINFO.search(url)
    if found is None:
        return []
    userinfo = found["userinfo"]
    parts = [userinfo, *userinfo.split(":", 1)[1:]]
    return [p for p in parts if len(p) >= 4]


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
