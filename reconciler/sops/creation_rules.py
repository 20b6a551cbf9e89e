"""Find encryption recipients in the nearest `.sops.yaml`, as `sops encrypt` picks a creation rule."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from reconciler.sops.errors import KeyConfigError

CONFIG_NAMES = (".sops.yaml", ".sops.yml")
_HINT = "pass --age RECIPIENT, or add creation_rules with age:/pgp: recipients to .sops.yaml"


def find_sops_config(start: Path) -> Path | None:
    """The nearest `.sops.yaml` in `start` (a directory, or a file's directory) or a parent."""
    start = Path(start).absolute()
    directory = start if start.is_dir() else start.parent
    for candidate in (directory, *directory.parents):
        for name in CONFIG_NAMES:
            if (candidate / name).is_file():
                return candidate / name
    return None


def find_creation_recipients(start: Path) -> tuple[list[str], list[str]]:
    """Age recipients and PGP fingerprints of the creation rule for `start`.

    The rule is the first whose `path_regex` matches `start`'s path relative to the config's
    directory (a rule without `path_regex` matches everything); if none matches, the first rule.
    """
    start = Path(start).absolute()
    config = find_sops_config(start)
    if config is None:
        where = start if start.is_dir() else start.parent
        raise KeyConfigError(f"no .sops.yaml found in {where} or its parents", hint=_HINT)
    rules = _load_rules(config)
    relative = "" if start.is_dir() else _relative(start, config.parent)
    chosen = next(
        (r for r in rules if not r.get("path_regex") or _matches(r["path_regex"], relative, config)),
        rules[0],
    )
    number = rules.index(chosen) + 1
    if chosen.get("key_groups"):
        raise KeyConfigError(
            f"creation rule {number} uses key_groups (Shamir), which pgwarden does not write",
            file=str(config),
            hint="list the recipients under age:/pgp: in that rule, or encrypt with the Go sops binary",
        )
    age, pgp = _split(chosen.get("age")), [fp.upper() for fp in _split(chosen.get("pgp"))]
    if not age and not pgp:
        raise KeyConfigError(f"creation rule {number} lists no age or pgp recipients", file=str(config), hint=_HINT)
    return age, pgp


def _load_rules(config: Path) -> list[Mapping[str, Any]]:
    try:
        data = YAML(typ="safe", pure=True).load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, YAMLError):
        raise KeyConfigError("cannot read it as YAML", file=str(config)) from None
    rules = data.get("creation_rules") if isinstance(data, Mapping) else None
    if not isinstance(rules, list) or not rules or not all(isinstance(r, Mapping) for r in rules):
        raise KeyConfigError("has no creation_rules list of mappings", file=str(config), hint=_HINT)
    return rules


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _matches(pattern: object, relative: str, config: Path) -> bool:
    try:
        return re.search(str(pattern), relative) is not None  # Go regexp MatchString: unanchored
    except re.error:
        raise KeyConfigError("a creation rule has an invalid path_regex", file=str(config)) from None


def _split(recipients: object) -> list[str]:
    """sops accepts a comma-separated string (newlines allowed) or a list."""
    if recipients is None:
        return []
    items = recipients if isinstance(recipients, list) else str(recipients).split(",")
    return [str(item).strip() for item in items if str(item).strip()]
