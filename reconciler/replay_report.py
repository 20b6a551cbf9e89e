"""A replay (reconciler/replay.py) as text, JSON and Markdown, for a terminal, a tool or a pull request.

Statements are shown as logged, on one line and cut at EXAMPLE_CHARS: the log already holds them, and the
report goes where the log's readers are; no secret value is read to build it.
"""

from __future__ import annotations

from typing import Any

from reconciler.replay import Example, PairReport, Replay

EXAMPLE_CHARS = 160


def _one_line(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= EXAMPLE_CHARS else flat[: EXAMPLE_CHARS - 1] + "…"


def _changed(replay: Replay) -> list[PairReport]:
    return [p for _, p in sorted(replay.pairs.items()) if p.to_deny or p.to_allow]


def _skipped_words(replay: Replay) -> list[str]:
    lines = [f"{n} skipped: {reason}" for reason, n in sorted(replay.skipped.items())]
    if replay.assumed_aal1:
        lines.append(f"{replay.assumed_aal1} replayed as an AAL1 token session: the log does not say the session's "
                     "AAL (written by an older pgwarden)")
    return lines


def render_text(replay: Replay, *, source: str, policies: str) -> str:
    unchanged = replay.replayed - replay.to_deny - replay.to_allow
    lines = [f"replayed {replay.replayed} requests of {source} under {policies}: "
             f"ALLOW → DENY {replay.to_deny} · DENY → ALLOW {replay.to_allow} · unchanged {unchanged}"]
    lines += [f"  {line}" for line in _skipped_words(replay)]
    for pair in _changed(replay):
        lines.append("")
        lines.append(f"{pair.user} · {pair.service} · {pair.replayed} replayed · ALLOW → DENY {pair.to_deny} · "
                     f"DENY → ALLOW {pair.to_allow}")
        for title, examples in (("ALLOW → DENY", pair.to_deny_examples), ("DENY → ALLOW", pair.to_allow_examples)):
            for ex in examples:
                lines.append(f"  {title}  {ex.at} {ex.kind} {_one_line(ex.text)}")
                lines.append(f"      was {ex.before}; now {ex.after}")
    if not replay.is_changed:
        lines.append("no request would be decided differently")
    return "\n".join(lines) + "\n"


def render_markdown(replay: Replay, *, source: str, policies: str) -> str:
    unchanged = replay.replayed - replay.to_deny - replay.to_allow
    lines = ["### Replay of the access log", "",
             f"{replay.replayed} requests of `{source}` re-decided under {policies}: "
             f"**{replay.to_deny}** ALLOW → DENY, **{replay.to_allow}** DENY → ALLOW, {unchanged} unchanged."]
    skipped = _skipped_words(replay)
    lines += ["", *[f"- {_md(line)}" for line in skipped]] if skipped else []
    changed = _changed(replay)
    if changed:
        lines += ["", "| user | service | replayed | ALLOW → DENY | DENY → ALLOW |", "|---|---|---|---|---|"]
        lines += [f"| {_md(p.user)} | {_md(p.service)} | {p.replayed} | {p.to_deny} | {p.to_allow} |" for p in changed]
        for pair in changed:
            lines += ["", f"#### {_md(pair.user)} · {_md(pair.service)}", ""]
            for title, examples in (("ALLOW → DENY", pair.to_deny_examples),
                                    ("DENY → ALLOW", pair.to_allow_examples)):
                for ex in examples:
                    lines.append(f"- {title} `{_code(_one_line(ex.text))}` ({ex.kind}, {ex.at}): was "
                                 f"{_md(ex.before)}; now {_md(ex.after)}")
    else:
        lines += ["", "No request would be decided differently."]
    return "\n".join(lines) + "\n"


def to_json(replay: Replay, *, source: str, policies: str) -> dict[str, Any]:
    def example(ex: Example) -> dict[str, Any]:
        return {"at": ex.at, "kind": ex.kind, "statement": ex.text, "before": ex.before, "after": ex.after}

    return {
        "accessLog": source, "policies": policies, "records": replay.records, "replayed": replay.replayed,
        "allowToDeny": replay.to_deny, "denyToAllow": replay.to_allow, "skipped": dict(sorted(replay.skipped.items())),
        "assumedAal1": replay.assumed_aal1,
        "pairs": [{"user": p.user, "service": p.service, "replayed": p.replayed, "allowToDeny": p.to_deny,
                   "denyToAllow": p.to_allow, "allowToDenyExamples": [example(e) for e in p.to_deny_examples],
                   "denyToAllowExamples": [example(e) for e in p.to_allow_examples]}
                  for _, p in sorted(replay.pairs.items())],
    }


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return text.replace("`", "'").replace("|", "\\|")
