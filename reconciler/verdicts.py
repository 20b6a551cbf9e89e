"""Fold the outcomes of one access question under many variants into a verdict, with its condition in words.

A variant is (session, clock sample, statement): session "AAL1" (a token), "AAL2" (a passkey login) or
"AAL2-totp" (a second factor), the hour of the sampled week
(0 = Monday 00:30 local) and the index of the statement among its class's texts. The words name the input
that changed the answer: `needs AAL2`, `ALLOW Tue/Thu 09:00–11:00 Europe/Berlin, else DENY (p/r)`, or the
statement texts. Time windows are the runs of local hours, per weekday, where the outcome differs.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

ALLOW, DENY, REFUSED, CONDITIONAL = "ALLOW", "DENY", "REFUSED", "CONDITIONAL"
DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
Variant = tuple[str, int, int]  # (session label, hour of the week, statement index)


@dataclass(frozen=True, slots=True)
class Outcome:
    """One evaluation: ALLOW/DENY (or REFUSED: no connection) and what decided it, in words."""

    verdict: str
    by: str
    config: str = ""  # connect outcomes: the config name, upstream role and database
    role: str = ""
    database: str = ""

    def words(self) -> str:
        if self.config:
            return f"connects as {self.role} ({self.config}; {self.by})"
        return f"{self.verdict} ({self.by})"


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """An answer over every variant: one Outcome, or CONDITIONAL with the condition in words."""

    outcome: Outcome  # the representative: AAL1 session, the week's first sample, the first statement
    condition: str = ""  # "" when every variant agrees
    # Every variant's outcome, for tests and tools that check one variant; not part of equality.
    outcomes: Mapping[Variant, Outcome] = field(default_factory=dict, compare=False, repr=False)

    @property
    def decision(self) -> str:
        return CONDITIONAL if self.condition else self.outcome.verdict

    def summary(self) -> str:
        """`ALLOW (policy/rule)`, or `CONDITIONAL: needs AAL2 ...`."""
        return f"{CONDITIONAL}: {self.condition}" if self.condition else self.outcome.words()


def summarize(outcomes: Mapping[Variant, Outcome], zone: str, hours: int, texts: Sequence[str]) -> Verdict:
    """One Verdict for all variants; `texts` are the statements by index ("" where there is none)."""
    first = outcomes[min(outcomes)] if ("AAL1", 0, 0) not in outcomes else outcomes[("AAL1", 0, 0)]
    if len(set(outcomes.values())) == 1:
        return Verdict(outcome=first, outcomes=outcomes)
    by_session: dict[str, dict[tuple[int, int], Outcome]] = {}
    for (label, hour, text), outcome in outcomes.items():
        by_session.setdefault(label, {})[(hour, text)] = outcome
    parts = {label: _within_session(sub, zone, hours, texts) for label, sub in sorted(by_session.items())}
    if len(set(parts.values())) == 1:
        return Verdict(outcome=first, condition=next(iter(parts.values())), outcomes=outcomes)
    constant = {label: set(sub.values()) for label, sub in by_session.items()}
    aal1 = constant.get("AAL1", set())
    aal2 = set().union(*(v for label, v in constant.items() if label.startswith("AAL2")))
    if len(aal1) == 1 and len(aal2) == 1 and next(iter(aal2)).verdict == ALLOW != next(iter(aal1)).verdict:
        return Verdict(outcome=first, condition=f"needs AAL2 (at AAL1: {next(iter(aal1)).words()})", outcomes=outcomes)
    labels_by_words: dict[str, list[str]] = {}
    for label, words in parts.items():
        labels_by_words.setdefault(words, []).append(label)
    condition = "; ".join(f"at {', '.join(labels)}: {words}" for words, labels in labels_by_words.items())
    return Verdict(outcome=first, condition=condition, outcomes=outcomes)


def _within_session(sub: Mapping[tuple[int, int], Outcome], zone: str, hours: int, texts: Sequence[str]) -> str:
    values = set(sub.values())
    if len(values) == 1:
        return next(iter(values)).words()
    per_text = {t: {o for (_, tt), o in sub.items() if tt == t} for t in range(len(texts))}
    if all(len(v) == 1 for v in per_text.values()):
        return "; ".join(f"{next(iter(v)).words()} for `{texts[t]}`" for t, v in per_text.items())
    per_hour = {h: {o for (hh, _), o in sub.items() if hh == h} for h in range(hours)}
    if all(len(v) == 1 for v in per_hour.values()):
        return windows({h: next(iter(v)) for h, v in per_hour.items()}, zone)
    return "; ".join(f"for `{texts[t]}`: " + windows({h: sub[(h, t)] for h in range(hours)}, zone)
                     for t in range(len(texts)))


def windows(by_hour: Mapping[int, Outcome], zone: str) -> str:
    """`ALLOW (p/r) Tue/Thu 09:00–11:00 Europe/Berlin, else DENY (p/r)`: the less common outcomes by window."""
    counts = Counter(by_hour.values())
    usual = counts.most_common(1)[0][0]
    if len(counts) == 1:
        return usual.words()
    shown = [f"{o.words()} {_hour_ranges([h for h, x in by_hour.items() if x == o])} {zone}"
             for o in counts if o != usual]
    return ", ".join(shown) + f", else {usual.words()}"


def _hour_ranges(hours: Sequence[int]) -> str:
    """Hours of the week (0 = Monday 00:00–01:00) as `Tue/Thu 09:00–11:00`, days with the same runs joined."""
    runs_by_day: dict[int, list[tuple[int, int]]] = {}
    for day in range(7):
        inside = sorted(h - day * 24 for h in hours if day * 24 <= h < (day + 1) * 24)
        runs: list[tuple[int, int]] = []
        for h in inside:
            if runs and runs[-1][1] == h:
                runs[-1] = (runs[-1][0], h + 1)
            else:
                runs.append((h, h + 1))
        if runs:
            runs_by_day[day] = runs
    groups: dict[tuple[tuple[int, int], ...], list[int]] = {}
    for day, runs in runs_by_day.items():
        groups.setdefault(tuple(runs), []).append(day)
    out = []
    for shape, days in groups.items():
        when = "all day" if shape == ((0, 24),) else ", ".join(f"{a:02d}:00–{b:02d}:00" for a, b in shape)
        out.append(f"{'/'.join(DAY_NAMES[d] for d in days)} {when}")
    return "; ".join(out)
