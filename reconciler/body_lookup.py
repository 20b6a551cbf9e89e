"""Lookups into manifest bodies of any shape: the checks walk documents that may have failed their schema,
so every step tolerates a missing key or a value of the wrong type."""

from __future__ import annotations

from typing import Any


def get(value: Any, *keys: str) -> Any:
    """value[k1][k2]..., or None where a step is missing or not a mapping."""
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def as_list(value: Any) -> list[Any]:
    """value if it is a list, else an empty one."""
    return value if isinstance(value, list) else []


def as_str(value: Any) -> str | None:
    """value if it is a string, else None."""
    return value if isinstance(value, str) else None


def service_configs(spec: Any) -> list[tuple[str, dict[str, Any], str]]:
    """(name, config, path) for the default config and each named dynamic config, in manifest order."""
    found = [("default", spec["config"], "spec.config")] if isinstance(get(spec, "config"), dict) else []
    for i, config in enumerate(as_list(get(spec, "dynamicConfig", "configs"))):
        name = as_str(get(config, "name"))
        if name is not None:
            found.append((name, config, f"spec.dynamicConfig.configs[{i}]"))
    return found
