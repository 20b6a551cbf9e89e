"""`pgwarden up --demo`: a throwaway PostgreSQL, a local Git copy of examples-repo/ and a local OpenID Provider.

The demo database gets the seed's roles (`full_access`, `read_only`) with the passwords held in
the example repo's sops-encrypted Secrets, decrypted in memory with the repo's demo-only age key.
In a source checkout with `npm ci` done, the test OpenID Provider (tests/peers/oidc_provider.mjs, npm
oidc-provider, any password) runs too, so `pgwarden login` can be tried as alice or bob.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import git

from pgwarden.pgcluster import Cluster, ClusterError, PortInUse, find_bindir
from reconciler import decrypt, load
from reconciler.sops import KeyRing, encrypt_secret_manifest

EXAMPLES_REPO = Path(__file__).resolve().parents[1] / "examples-repo"
DEMO_KEY = "demo-age-key.txt"
DEMO_PG_PORT = 54329  # examples-repo's Services point here
DEMO_OIDC_PORT = 54330  # the demo IdentityProvider's issuer
SOURCE_ROOT = EXAMPLES_REPO.parent
OIDC_PEER = SOURCE_ROOT / "tests" / "peers" / "oidc_provider.mjs"
# The peer's built-in confidential client (tests/peers/oidc_provider.mjs): demo-only, like the demo age key.
DEMO_OIDC_CLIENT_ID = "pgwarden"
DEMO_OIDC_CLIENT_SECRET = "pgwarden-peer-secret"
DEMO_IDP_MANIFEST = f"""\
# The demo's single sign-on: a local OpenID Provider (npm oidc-provider) that `pgwarden up --demo` starts.
# Its login page takes any password; alice and bob are found by their verified email addresses.
kind: IdentityProvider
metadata:
  name: demo-sso
spec:
  displayName: Sign in with the demo SSO (any password)
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

    @property
    def port(self) -> int:
        return self.cluster.port

    def stop(self) -> None:
        self.cluster.destroy()


@dataclass(slots=True, kw_only=True)
class DemoIdentityProvider:
    process: subprocess.Popen[bytes]
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def start_identity_provider(data_dir: Path, redirect_uri: str, *, port: int = DEMO_OIDC_PORT,
                            timeout_s: float = 15) -> DemoIdentityProvider:
    """node tests/peers/oidc_provider.mjs on localhost:port, accepting logins back to `redirect_uri`."""
    node = shutil.which("node")
    if node is None or not (SOURCE_ROOT / "node_modules" / "oidc-provider").is_dir() or not OIDC_PEER.is_file():
        raise DemoError(f"it needs Node.js and `npm ci` in a source checkout ({SOURCE_ROOT}); see README, "
                        "\"Try login locally\"")
    with open(data_dir / "demo-oidc-provider.log", "wb") as log:
        process = subprocess.Popen([node, str(OIDC_PEER), str(port), redirect_uri], cwd=SOURCE_ROOT,
                                   stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    sso = DemoIdentityProvider(process=process, url=f"http://localhost:{port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the demo OpenID Provider exited (is port {port} in use?); see "
                            f"{data_dir / 'demo-oidc-provider.log'}")
        try:
            with urllib.request.urlopen(sso.url + "/.well-known/openid-configuration", timeout=1):
                return sso
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    sso.stop()
    raise DemoError(f"the demo OpenID Provider did not answer on {sso.url} within {timeout_s:.0f} s")


def demo_passwords(repo: Path) -> dict[str, str]:
    """Secret name → value, decrypted in memory with the repo's demo key."""
    keys = KeyRing.from_files(age_key_files=[repo / DEMO_KEY])
    try:
        files, problems = load.read_directory(repo)
        documents = decrypt.secrets(load.parse_files(files, problems), keys)
    finally:
        keys.close()
    return {d.name: str(d.body["data"]["value"]) for d in documents if d.kind == "Secret"}


def start_database(passwords: dict[str, str], *, port: int = DEMO_PG_PORT) -> DemoDatabase:
    """A throwaway PostgreSQL on 127.0.0.1:port (SCRAM over TCP), then the seed's roles, database and grants."""
    try:
        bindir = find_bindir()
    except ClusterError as exc:
        raise DemoError(f"the demo needs PostgreSQL: {exc}") from exc
    cluster = Cluster(Path(tempfile.mkdtemp(prefix="pgwarden-demo-pg-")), bindir=bindir, port=port)
    database = DemoDatabase(cluster=cluster)
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
    repo = git.Repo.init(repo_dir, initial_branch="main")
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
