"""The reconcile loop: fetch → load → decrypt → validate → build → diff → apply → prune → health.

Only this module knows the order. Each stage raises its own error (`reconciler.errors`); `status.classify`
maps it to a condition. Level-based: each run compares the revision's desired state with what is live.
A bad revision is terminal (Stalled until a new one); an outage is retried with capped exponential
backoff. Either way the last good snapshot stays live, and prune never runs after an error.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from proxy.snapshot import Snapshot
from proxy.snapshot_wire import to_wire
from reconciler import apply, build, decrypt, diff, health, json_schema, load, validate
from reconciler.sops import KeyRing
from reconciler.source import GitSource, Revision, UntrustedRevision
from reconciler.status import ConditionStatus, ConditionType, Failure, Reason, Status, classify

log = logging.getLogger("pgwarden.reconciler")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 300.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconcileOptions:
    allow_empty: bool = False
    allow_plaintext_secrets: bool = False
    health_probe: bool = True
    status_path: Path | None = None  # status.json in the data directory (no secrets in it)


class Reconciler:
    """Keeps the live proxy at the desired state of one Git source."""

    def __init__(self, source: GitSource, target: apply.LiveTarget, keys: KeyRing | None,
                 options: ReconcileOptions) -> None:
        self.source = source
        self.target = target
        self.keys = keys
        self.options = options
        self.status = Status(source=source.describe(), ref=source.spec.ref or "(default branch)",
                             path=source.spec.path)
        if options.status_path is not None:
            self.status.inventory = Status.load_inventory(options.status_path)
        self._lock = asyncio.Lock()
        self._failures = 0
        self._stalled_on: str | None = None  # the revision a terminal error was about
        self._last_revision: Revision | None = None
        self._retry: asyncio.TimerHandle | None = None
        self.applied = asyncio.Event()  # set after each successful apply (tests and `up` wait on it)
        # Called after every status change (notifications); each must return at once, never block the loop.
        self.status_listeners: list[Callable[[Status], None]] = []
        self._fingerprint_key = secrets.token_bytes(32)  # in-process only: compares live and desired
        # The pure stages' memories: what unchanged files parsed, decrypted, validated and built to is reused.
        self._parser = load.Parser()
        self._decryptor = decrypt.Decryptor()
        self._verdicts = json_schema.SchemaVerdicts()
        self._builder = build.Builder()

    # --- control -------------------------------------------------------------------------
    def suspend(self) -> None:
        self.status.suspended = True
        self.status.set_condition(ConditionType.SUSPENDED, ConditionStatus.TRUE, Reason.SUSPENDED,
                                  "reconciliation is suspended")
        self._save()

    def resume(self) -> None:
        self.status.suspended = False
        self.status.conditions.pop(ConditionType.SUSPENDED, None)
        self._save()
        self.source.trigger()

    def request(self, *, with_source: bool) -> None:
        """`pgwarden reconcile`: run now; re-fetch only when asked (with_source)."""
        self._stalled_on = None  # an explicit request retries even a stalled revision
        if with_source or self._last_revision is None:
            self.source.trigger()
        else:
            asyncio.get_running_loop().create_task(self.reconcile(fetch=False))

    async def run(self, *, initial: bool = True) -> None:
        """Reconcile at start, then on every change signal from the source (poll, watch, webhook)."""
        if initial:
            await self.reconcile()
        async for _ in self.source.changes():
            await self.reconcile()

    # --- one cycle -----------------------------------------------------------------------
    async def reconcile(self, *, fetch: bool = True) -> bool:
        """One full cycle. Returns True when the revision is live."""
        if self.status.suspended:
            return False
        async with self._lock:
            started = time.time()
            revision_id = self._last_revision.id if self._last_revision else ""
            try:
                revision = await self.source.fetch() if fetch or self._last_revision is None else self._last_revision
                revision_id = revision.id
                if revision_id == self._stalled_on and revision_id != self.status.last_applied_revision:
                    return False  # same bad revision: wait for a new commit (or an explicit request)
                self._last_revision = revision
                self.status.started(revision_id)
                desired = await asyncio.to_thread(self._desired, revision)  # load, decrypt, validate, build
                live = self.target.current()
                the_plan = apply.plan(desired, live, self.status.inventory, allow_empty=self.options.allow_empty)
                # What this apply changes, secrets compared by fingerprint only (never shown).
                changeset = diff.diff_snapshots(to_wire(live, fingerprint_key=self._fingerprint_key),
                                                the_plan.snapshot, fingerprint_key=self._fingerprint_key)
                generation = await apply.changes(self.target, the_plan)  # the swap prunes what the plan dropped
            except Exception as exc:  # noqa: BLE001 - every failure is classified and kept in status
                if isinstance(exc, UntrustedRevision):
                    revision_id = exc.revision  # refused before a Revision existed
                self._fail(revision_id, started, classify(exc))
                return False
            self._failures = 0
            self._stalled_on = None
            self.status.succeeded(revision_id, started, the_plan.snapshot, generation, the_plan.inventory,
                                  changes=[f"{c.action.value} {c.kind}/{c.name}" for c in changeset])
            log.info("applied %s as generation %d (%d pruned, %d kept from other writers) in %.0f ms",
                     revision_id, generation, len(the_plan.pruned), len(the_plan.kept),
                     (time.time() - started) * 1000)
            self._save()
            self.applied.set()
        if self.options.health_probe:
            await self._probe(the_plan.snapshot)
        return True

    def _desired(self, revision: Revision) -> Snapshot:
        """The pure stages, in order, in a worker thread; each raises its own ManifestErrors subclass."""
        files, refused = load.read_directory(revision.root)
        documents = self._parser.parse_files(files, refused)  # UnreadableManifests
        documents = self._decryptor.secrets(documents, self.keys,  # UndecryptableSecrets; plaintext only in memory
                                            allow_plaintext=self.options.allow_plaintext_secrets)
        validate.validate_all(documents, verdicts=self._verdicts)  # InvalidManifests
        return build.build_snapshot(documents, revision=revision.id,  # UnbuildableManifests
                                    source=self.source.describe(), builder=self._builder)

    async def _probe(self, snapshot: Snapshot) -> None:
        results = await health.check(snapshot)
        self.status.health = health.as_text(results)
        degraded = {service for service, configs in results.items() if any(r.is_degraded for r in configs.values())}
        if degraded:
            names = ", ".join(sorted(degraded))
            self.status.set_condition(ConditionType.HEALTHY, ConditionStatus.FALSE, Reason.HEALTH_CHECK_FAILED,
                                      f"upstream login failed for: {names}")
        else:
            self.status.set_condition(ConditionType.HEALTHY, ConditionStatus.TRUE, Reason.RECONCILIATION_SUCCEEDED,
                                      "every upstream config accepted its login")
        self._save()

    def _fail(self, revision_id: str, started: float, error: Failure) -> None:
        retry_at = None
        if error.is_terminal:
            self._stalled_on = revision_id
            log.error("revision %s rejected (%s); generation %d stays live:\n  %s", revision_id,
                      error.reason.value, self.status.generation, "\n  ".join(error.errors))
        else:
            self._failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (self._failures - 1)) * random.uniform(0.8, 1.2)
            retry_at = time.time() + delay
            if self._retry is not None:
                self._retry.cancel()
            self._retry = asyncio.get_running_loop().call_later(delay, self.source.trigger)
            log.warning("reconcile of %s failed (%s): %s; retrying in %.1f s", revision_id or "(no revision)",
                        error.reason.value, error.message, delay)
        self.status.failed(revision_id, started, error, retry_at=retry_at)
        self._save()

    def _save(self) -> None:
        if self.options.status_path is not None:
            self.status.save(self.options.status_path)
        for listener in self.status_listeners:
            try:
                listener(self.status)
            except Exception:  # noqa: BLE001 - a listener's bug must not fail a reconcile
                log.exception("status listener failed")
