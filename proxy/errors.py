"""The root error module: `PgwardenError`, the errors of the proxy itself, and the drawing of every error tree.

The tree is every exception class pgwarden defines, wherever it lives (a class in another module names its
file); tests/test_error_tree.py checks it against the real classes, so a new class must be drawn here.

PgwardenError                         XX000; message, detail, hint: what a PostgreSQL client sees
├── ProtocolViolation                 08P01, proxy/pgwire/errors.py; `whose` says which side sent the bytes
│   └── MessageTooLarge               a message over the reader's limit; nothing more is buffered
├── UpstreamAuthError                 28000, proxy/pgwire/auth.py: the upstream asked what we cannot do
├── AuthenticationFailed              28000 / 28P01
│   └── CertificateRequestInvalid     identity/certs.py: a CSR we will not sign
├── UnknownService                    3D000
├── AccessDenied                      42501; names the policy rule that decided
├── TooManyConnections                53300, proxy/guardrails.py: a guard rail's connection cap is reached
├── UpstreamUnavailable               08006
├── AdminShutdown                     57P01; the proxy is draining (SIGTERM) and ends the session
├── SnapshotRejected                  the admin API refused a snapshot; nothing changed
│   ├── SnapshotInvalid               it cannot be compiled: the same snapshot is always refused
│   ├── WorkerUnreachable             a worker could not be asked: a retry may succeed
│   └── SnapshotSuperseded            a newer reload went live while this one compiled; it is dropped
├── IdentityError                     28000, identity/errors.py: a login through an identity provider failed
│   ├── ProviderUnavailable           unreachable, or not speaking OAuth/OIDC (transient)
│   ├── ProviderMisconfigured         its discovery contradicts our configuration
│   ├── CallbackRejected              the redirect back is not the answer to our request
│   ├── AuthorizationDenied           the user or the provider said no
│   ├── TokenRequestRefused           the token endpoint answered an OAuth error
│   ├── DeviceCodeExpired             the device code expired before the user approved it
│   ├── TokenRejected                 a JWT or userinfo failed a check
│   │   └── UnknownKey                identity/providers/oidc/verification.py: a `kid` the JWKS lacks (yet)
│   ├── AmbiguousIdentity             identity/mapping.py: two Users claim one external identity
│   └── LoginRefused                  identity/web/flow.py: a login that cannot finish; the page says why
├── StateStoreError                   identity/store/base.py: the identity state store could not do it
│   ├── StateStoreUnavailable         the backend cannot be opened or reached
│   ├── EncryptionKeyMismatch         sealed data does not open with our encryption key
│   ├── SchemaTooNew                  migrated by a newer pgwarden
│   └── StateConflict                 a value that must be unique is already stored
├── ConfigError                       reconciler/errors.py: one problem in the manifests, at file/document/path
│   ├── ManifestSyntaxError           unreadable file: YAML syntax, duplicate key, size limit, symlink
│   ├── SchemaViolation               a document does not match its kind's JSON Schema
│   ├── DanglingReference             names something that does not exist; parent cycles
│   ├── DuplicateName                 two documents of one kind share metadata.name
│   ├── InvalidExpression             a CEL condition does not compile
│   ├── DecryptionFailed              an encrypted Secret could not be (or may not be) decrypted
│   └── UnencryptedSecret             reconciler/review.py: a plaintext Secret where only sops is accepted
├── ReconcileError                    reconciler/errors.py: a stage of the reconcile loop failed
│   ├── ManifestErrors                terminal: every ConfigError one stage found
│   │   ├── UnreadableManifests       load
│   │   ├── UndecryptableSecrets      decrypt
│   │   ├── InvalidManifests          validate
│   │   └── UnbuildableManifests      build
│   ├── EmptyRevisionRefused          terminal, apply: the revision has no objects and allowEmpty is off
│   ├── SnapshotRefused               terminal, apply: the proxy cannot compile the snapshot
│   ├── TargetUnavailable             transient, apply: the proxy (or a worker) could not take it now
│   ├── SourceError                   transient, reconciler/source.py: the source could not be fetched
│   └── UntrustedRevision             terminal, reconciler/source.py: the commit is not signed by a trusted key
└── GitTreeError                      reconciler/git_tree.py: a tree at a git ref could not be read

Roots of their own, caught inside their room and translated there (a client never sees them as they are):

SopsError                             reconciler/sops/errors.py: the sops codec; decrypt.py makes DecryptionFailed
├── NotASopsFile                      the document has no `sops` metadata block
├── SopsFormatError                   the file, an ENC[...] string or the metadata block is malformed
├── KeyConfigError                    a key file, keyring, recipient or .sops.yaml could not be used
├── SopsDecryptionError               a value, the MAC or the data key could not be authenticated
│   ├── MacMismatch                   the MAC is missing or does not match
│   └── DataKeyUnavailable            no key slot opened the data key
├── EncryptionFailed                  a value or the data key could not be encrypted
└── BackendError                      the optional Go `sops` binary failed
GpgFailed                             reconciler/sops/gpg.py: one key slot did not open
KeyringError                          reconciler/signatures.py: a trusted key cannot be read; becomes SourceError
CelCompileError                       proxy/policy/cel.py (a ValueError): becomes InvalidExpression
CostLimitError                        proxy/policy/cel_cost.py (a ValueError): over a compile-time limit
ConditionError                        proxy/policy/cel.py: an evaluation failed; the engine denies (fails closed)
CostExceeded                          proxy/policy/cel_cost.py: an evaluation spent its budget; denied
OAuthError                            identity/web/client_credentials.py: an RFC 6749 §5.2 error response
Unsupported                           reconciler/yaml12.py: signal, parse this file with ruamel instead
_NotCompilable                        reconciler/schema_check.py: signal, keep jsonschema's validator

The command's own (pgwarden/), each printed by its command in libpq's shape:

CredentialsError                      pgwarden/credentials.py: the saved login is missing, unreadable or ended
LoginFailed                           pgwarden/commands/login.py: `pgwarden login` did not finish
SessionEnded                          pgwarden/sessioncredential.py: the cluster refused the identity Session
AdminUnavailable                      pgwarden/adminclient.py: no pgwarden on the admin socket
Refusal                               pgwarden/agent.py: sent to a local client as one FATAL ErrorResponse
OwnerUnknown                          pgwarden/peer_owner.py: the OS does not list this client's socket
DemoError                             pgwarden/demo.py: the demo cannot start
DemoIdpError                          pgwarden/demo_idp.py: the demo sign-in server did not start
ClusterError                          pgwarden/pgcluster.py (a RuntimeError): initdb, pg_ctl or psql failed
└── PortInUse                         the cluster's fixed port is taken

The process assembly's own (runtime/):

WorkersFailed                         runtime/workers.py: a worker process did not start or has died
"""

from __future__ import annotations


class PgwardenError(Exception):
    """Every error pgwarden raises on purpose. `sqlstate` is what a PostgreSQL client sees."""

    sqlstate = "XX000"

    def __init__(self, message: str, *, detail: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.hint = hint


class AuthenticationFailed(PgwardenError):
    """The client's credential was missing, wrong, expired or not allowed here."""

    sqlstate = "28000"


class UnknownService(PgwardenError):
    """The client asked for a service the live snapshot does not have."""

    sqlstate = "3D000"


class AccessDenied(PgwardenError):
    """A rule or policy refused the request."""

    sqlstate = "42501"


class UpstreamUnavailable(PgwardenError):
    """The real database could not be reached or refused our login."""

    sqlstate = "08006"


class AdminShutdown(PgwardenError):
    """The proxy is shutting down (drained after SIGTERM); the client should reconnect, to another replica."""

    sqlstate = "57P01"


class SnapshotRejected(PgwardenError):
    """A snapshot could not be applied; the previous one stays live."""

    sqlstate = "XX000"


class SnapshotInvalid(SnapshotRejected):
    """The snapshot cannot be compiled (a rule, a policy); applying it again would fail the same way."""


class WorkerUnreachable(SnapshotRejected):
    """A worker process could not be reached or did not answer; a later apply may succeed."""


class SnapshotSuperseded(SnapshotRejected):
    """A reload asked for later went live while this one compiled: swapping it in now would go back in time."""
