"""A throwaway OS user for tests of "another local user" (needs root: useradd, runuser)."""

from __future__ import annotations

import pwd
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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


@contextmanager
def directory_others_can_reach() -> Iterator[Path]:
    """A fresh directory under /tmp (pytest's tmp_path sits below a 0700 directory another user cannot enter)."""
    path = Path(tempfile.mkdtemp(prefix="pgwarden-shared-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
