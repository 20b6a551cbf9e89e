"""The state-store DSN: refused with a password on the command line; read from --state-file or $PGWARDEN_STATE."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from pgwarden.state_dsn import STATE_ENV, add_state_options, has_password, state_from


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_state_options(p)
    return p


@pytest.mark.parametrize("dsn, expected", [
    ("postgres://pgwarden@db/state", False),
    ("sqlite", False),
    ("postgres://pgwarden:s3cret@db/state", True),
    ("postgresql://pgwarden:@db/state", True),
    ("postgres://pgwarden@db/state?sslmode=require&password=s3cret", True),
    ("postgres://pgwarden@db/state?PASSWORD=s3cret", True),
    ("host=db user=pgwarden password=s3cret", True),
    ("postgres://pgwarden:s3cret@[::1/state", True),  # unparsable: assumed to carry one
])
def test_has_password(dsn: str, expected: bool) -> None:
    assert has_password(dsn) is expected


def test_state_with_a_password_is_refused_without_repeating_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        argparse_with_exit().parse_args(["--state", "postgres://u:hunter2-pw@db/state"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "hunter2" not in err and "--state-file" in err and STATE_ENV in err


def argparse_with_exit() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_state_options(p)
    return p


def test_state_file_then_environment_then_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "state-dsn"
    path.write_text("\n  postgres://u:from-file@db/state  \n")
    path.chmod(0o600)
    env = {STATE_ENV: "postgres://u:from-env@db/state"}
    assert state_from(parser().parse_args(["--state-file", str(path)]), env) == "postgres://u:from-file@db/state"
    assert state_from(parser().parse_args([]), env) == "postgres://u:from-env@db/state"
    assert state_from(parser().parse_args(["--state", "sqlite"]), env) == "sqlite"
    assert state_from(parser().parse_args([]), {}) is None


def test_state_and_state_file_exclude_each_other(tmp_path: Path) -> None:
    path = tmp_path / "state-dsn"
    path.write_text("sqlite\n")
    with pytest.raises(SystemExit):
        argparse_with_exit().parse_args(["--state", "sqlite", "--state-file", str(path)])


def test_unreadable_or_empty_state_file_names_the_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").write_text("\n")
    for name, why in (("missing", "cannot read"), ("empty", "is empty")):
        with pytest.raises(SystemExit):
            argparse_with_exit().parse_args(["--state-file", str(tmp_path / name)])
        err = capsys.readouterr().err
        assert str(tmp_path / name) in err and why in err


def test_group_readable_state_file_with_a_password_warns(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "state-dsn"
    path.write_text("postgres://u:hunter2-pw@db/state\n")
    path.chmod(0o644)
    argparse_with_exit().parse_args(["--state-file", str(path)])
    err = capsys.readouterr().err
    assert "chmod 600" in err and "hunter2" not in err
