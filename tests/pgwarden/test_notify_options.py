"""`pgwarden up --notify-*`: where the webhook URL comes from, and errors that never repeat it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pgwarden.__main__ import build_parser
from pgwarden.notifications import URL_ENV, webhook_settings_from
from reconciler.notify import Format, WebhookSettings

SECRET_URL = "https://hooks.example.com/services/T0/B0/s3cr3t-t0ken"


def parse(*args: str) -> object:
    return build_parser("up").parse_args(["up", *args])


def test_the_url_comes_from_a_file_and_is_never_shown(tmp_path: Path) -> None:
    url_file = tmp_path / "url"
    url_file.write_text("\n" + SECRET_URL + "\n")
    settings = webhook_settings_from(parse("--notify-url-file", str(url_file), "--notify-format", "slack"), {})
    assert settings == WebhookSettings(url=SECRET_URL, format=Format.SLACK)
    assert settings is not None and settings.where == "https://hooks.example.com"


def test_the_environment_is_the_fallback_and_nothing_means_off() -> None:
    assert webhook_settings_from(parse(), {}) is None
    settings = webhook_settings_from(parse(), {URL_ENV: SECRET_URL})
    assert settings is not None and settings.url == SECRET_URL and settings.format is Format.JSON


@pytest.mark.parametrize("text", ["ftp://hooks.example.com/s3cr3t-t0ken", "hooks.example.com/s3cr3t-t0ken", ""])
def test_a_bad_url_file_is_refused_naming_the_file_not_the_url(tmp_path: Path, text: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    url_file = tmp_path / "url"
    url_file.write_text(text)
    with pytest.raises(SystemExit) as exit_:
        parse("--notify-url-file", str(url_file))
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and str(url_file) in err and "s3cr3t" not in err


def test_help_documents_the_options() -> None:
    out = subprocess.run([sys.executable, "-m", "pgwarden", "up", "--help"], capture_output=True, text=True,
                         timeout=60)
    for option in ("--notify-url-file", "--notify-format", "--notify-timeout", "--notify-queue"):
        assert option in out.stdout
