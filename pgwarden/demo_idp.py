"""The demo's single sign-on: a local OpenID Provider in Python (PyPI `oidc-provider-mock`), no Node.js needed.

`pgwarden up --demo` runs `python -m pgwarden.demo_idp PORT` on 127.0.0.1; its issuer is http://localhost:PORT.
Its sign-in page asks for no password: pick alice or bob (or erin), whom pgwarden finds by verified email.
Demo only: anyone who reaches the port can sign in as anyone, so it never listens beyond loopback.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

DISTRIBUTION = "oidc-provider-mock"  # pinned in pyproject.toml's `demo` extra
# The people of examples-repo/users/ that the demo IdentityProvider finds by email.
PEOPLE = {
    "alice": {"email": "alice@example.com", "email_verified": True, "name": "Alice"},
    "bob": {"email": "bob@example.com", "email_verified": True, "name": "Bob"},
    "erin": {"email": "erin@example.com", "email_verified": True, "name": "Erin"},
}


class DemoIdpError(Exception):
    """The demo OpenID Provider cannot start; the message says why."""


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


def start(log_path: Path, *, port: int, timeout_s: float = 15) -> DemoIdentityProvider:
    """`python -m pgwarden.demo_idp PORT` in the background, once it answers its discovery document."""
    if importlib.util.find_spec("oidc_provider_mock") is None:
        raise DemoIdpError(f"the demo OpenID Provider needs {DISTRIBUTION}: pip install -e '.[demo]'")
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "pgwarden.demo_idp", str(port)], stdin=subprocess.DEVNULL,
                                   stdout=log, stderr=log)
    sso = DemoIdentityProvider(process=process, url=f"http://localhost:{port}")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoIdpError(f"the demo OpenID Provider exited (is port {port} in use?); see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/openid-configuration", timeout=1):
                return sso
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    sso.stop()
    raise DemoIdpError(f"the demo OpenID Provider did not answer on {sso.url} within {timeout_s:.0f} s")


def serve(port: int) -> None:
    """Serve the provider on 127.0.0.1:port until SIGTERM (the body of `python -m pgwarden.demo_idp PORT`)."""
    # Authlib announces its own 2.0 (authlib.jose, httpx) on import: noise in a person's demo log. Its
    # `deprecate` module puts an "always" filter for its warnings first when imported, so ours goes in after.
    import authlib.deprecate

    warnings.filterwarnings("ignore", message=r".*(is deprecated|please use)")
    warnings.filterwarnings("ignore", category=authlib.deprecate.AuthlibDeprecationWarning)
    import oidc_provider_mock
    import werkzeug.serving

    os.environ["AUTHLIB_INSECURE_TRANSPORT"] = "1"  # plain http, on loopback only
    app = oidc_provider_mock.app(user_claims=[oidc_provider_mock.User(sub=sub, claims=claims)
                                              for sub, claims in PEOPLE.items()])

    class QuietHandler(werkzeug.serving.WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # one line per request would fill the log; errors are still logged

    server = werkzeug.serving.make_server("127.0.0.1", port, app, threaded=True, request_handler=QuietHandler)
    # serve_forever() runs in this thread, so shutdown() from here would wait for itself: leave the loop instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"demo OpenID Provider on http://localhost:{port}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
