"""A throwaway OS user for tests of "another local user" (needs root: useradd, runuser)."""

from __future__ import annotations

import pwd
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def other_os_user() -> Iterator[pwd.struct_passwd]:
    """Create a system user with no home and no login shell; delete it afterwards."""
    name = f"pgwtest{secrets.token_hex(4)}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True, capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=30)


def as_user(user: pwd.struct_passwd, argv: list[str]) -> list[str]:
    """argv run as `user` (its uid, gid and no supplementary groups)."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--", *argv]
