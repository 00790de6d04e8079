"""The benchmark report's numbers: rows grouped per method and attack, the main table, the
summary per defense over attacks, and the check that one table measured one training of each
model. Pure Python (no plotting), so that other scripts can reuse the tables.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from unbackdoor.bench.config import NONE

FLOOR_LABEL = "never backdoored (floor)"
CEILING_LABEL = "none"

Block = tuple[Any, ...]  # ("h1"|"h2"|"p", text) | ("table", header, rows) | ("img", path, alt)


# ----------------------------------------------------------------------------- numbers
def _nums(rows: Iterable[dict[str, Any]], key: str) -> list[float]:
    out = []
    for r in rows:
        v = r.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            out.append(float(v))
    return out


def mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (``None`` for fewer than two values)."""
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def fmt(values: Sequence[float], kind: str = "pct") -> str:
    """``98.21 ± 0.30%``, ``0.995``, ``39 s`` or ``1000``; ``-`` when there is nothing."""
    m, s = mean_std(values)
    if m is None:
        return "-"
    if kind == "pct":
        return f"{100 * m:.2f}%" if s is None else f"{100 * m:.2f} ± {100 * s:.2f}%"
    if kind == "rate":
        return f"{m:.3f}" if s is None else f"{m:.3f} ± {s:.3f}"
    if kind == "s":
        d = 1 if m < 10 else 0
        return f"{m:.{d}f} s" if s is None else f"{m:.{d}f} ± {s:.{d}f} s"
    return f"{m:.0f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return "\n".join(out)


def budget_label(budget: Any) -> str:
    """A budget as the tables show it: '5% of train', an image count, or '-' for none."""
    if budget is None:
        return "-"
    if isinstance(budget, float):
        return f"{100 * budget:g}% of train"
    return str(budget)


def first_seen(values: Iterable[Any]) -> list[Any]:
    """First-seen order, without duplicates."""
    return list(dict.fromkeys(values))


@dataclass
class Group:
    """The rows of one method on one attack (all seeds)."""

    attack: str
    defense: str
    role: str
    budget: Any
    rows: list[dict[str, Any]]

    @property
    def label(self) -> str:
        if self.role == "floor":
            return FLOOR_LABEL
        if self.role == "ceiling":
            return CEILING_LABEL
        return self.defense

    def values(self, key: str) -> list[float]:
        return _nums(self.rows, key)


def groups(rows: list[dict[str, Any]]) -> dict[tuple[str, str], list[Group]]:
    """Successful rows grouped by (data set, model), then by (attack, defense, budget)."""
    by: dict[tuple[str, str], dict[tuple, Group]] = defaultdict(dict)
    for r in rows:
        if r.get("status") != "ok":
            continue
        gk = (r["attack"], r["role"], r["defense"], r.get("budget"))
        g = by[(r["dataset"], r["model"])].setdefault(
            gk, Group(r["attack"], r["defense"], r["role"], r.get("budget"), [])
        )
        g.rows.append(r)
    role_rank = {"ceiling": 0, "floor": 1, "defense": 2}
    out = {}
    for dm, gs in by.items():
        attacks = first_seen(g.attack for g in gs.values())
        defenses = first_seen(g.defense for g in gs.values())
        out[dm] = sorted(
            gs.values(),
            key=lambda g: (
                attacks.index(g.attack),
                role_rank.get(g.role, 3),
                defenses.index(g.defense),
                -1 if g.budget is None else _budget_rank(g.budget),
            ),
        )
    return out


def _budget_rank(budget: Any) -> float:
    return float(budget) if isinstance(budget, int) else 1e9 * float(budget)


# ----------------------------------------------------------------------------- table
def main_table(gs: list[Group]) -> tuple[list[str], list[list[str]]]:
    header = ["attack", "defense", "budget", "CA", "ASR", "RA", "DER", "RA-ASR", "time"]
    header += ["samples used", "seeds"]
    rows = []
    for g in gs:
        time_key = "defense_time" if g.role == "defense" else None
        rows.append(
            [
                g.attack,
                g.label,
                budget_label(g.budget),
                fmt(g.values("clean_acc")),
                fmt(g.values("asr")),
                fmt(g.values("robust_acc")),
                fmt(g.values("der"), "rate"),
                fmt(g.values("retune_asr")),
                fmt(g.values(time_key), "s") if time_key else "-",
                fmt(g.values("clean_samples_used"), "n"),
                str(len(g.rows)),
            ]
        )
    return header, rows


@dataclass
class AttackSummary:
    """One defense on one attack, averaged over its seeds (the summary table's unit)."""

    attack: str
    ca_drop: float | None  # points of CA lost against the backdoored model the row started from
    asr: float | None
    retune_asr: float | None
    above_floor: float | None  # RA-ASR minus the never-backdoored model's, at least 0
    time: float | None


def _attack_summary(g: Group, floor_ra: dict[str, float]) -> AttackSummary:
    drops = [
        float(r["before"]["clean_acc"]) - float(r["clean_acc"])
        for r in g.rows
        if isinstance(r.get("before"), dict)
        and _nums([r["before"]], "clean_acc")
        and _nums([r], "clean_acc")
    ]
    ra = mean_std(g.values("retune_asr"))[0]
    floor = floor_ra.get(g.attack)
    above = None if ra is None or floor is None else max(0.0, ra - floor)
    return AttackSummary(
        g.attack,
        mean_std(drops)[0],
        mean_std(g.values("asr"))[0],
        ra,
        above,
        mean_std(g.values("defense_time"))[0],
    )


def defense_summaries(gs: list[Group]) -> dict[tuple[str, Any], list[AttackSummary]]:
    """Per (defense, budget): one :class:`AttackSummary` per attack it ran on (a
    never-backdoored model is not an attack: its rows are in :func:`clean_model_sentence`)."""
    floor_ra = {}
    for g in gs:
        if g.role == "floor" and (m := mean_std(g.values("retune_asr"))[0]) is not None:
            floor_ra[g.attack] = m
    out: dict[tuple[str, Any], list[AttackSummary]] = defaultdict(list)
    for g in gs:
        if g.role == "defense" and g.attack != NONE:
            out[(g.defense, g.budget)].append(_attack_summary(g, floor_ra))
    return dict(out)


@dataclass
class DefenseMeans:
    """One defense (at one budget) averaged over attacks: a row of the summary table."""

    defense: str
    budget: Any
    attacks: list[str]
    ca_drop: float | None
    asr: float | None
    worst: AttackSummary | None
    retune_asr: float | None
    retuned: int  # how many of the attacks have an RA-ASR
    above_floor: float | None
    floored: int  # how many have an RA-ASR and a floor to compare it with
    time: float | None


def defense_means(
    summaries: dict[tuple[str, Any], list[AttackSummary]], attacks: set[str] | None = None
) -> list[DefenseMeans]:
    """Each defense's means over the attacks it ran on (or over ``attacks`` only)."""
    out = []
    for (defense, budget), items in summaries.items():
        items = [s for s in items if attacks is None or s.attack in attacks]
        if not items:
            continue

        def mean_of(key: str, items: list[AttackSummary] = items) -> float | None:
            return mean_std([v for s in items if (v := getattr(s, key)) is not None])[0]

        asr = [s for s in items if s.asr is not None]
        out.append(
            DefenseMeans(
                defense,
                budget,
                [s.attack for s in items],
                mean_of("ca_drop"),
                mean_of("asr"),
                max(asr, key=lambda s: s.asr or 0.0) if asr else None,
                mean_of("retune_asr"),
                sum(s.retune_asr is not None for s in items),
                mean_of("above_floor"),
                sum(s.above_floor is not None for s in items),
                mean_of("time"),
            )
        )
    return out


def summary_table(means: list[DefenseMeans]) -> tuple[list[str], list[list[str]]]:
    """The summary table. CA drop is measured per row against the backdoored model that row
    started from; "RA-ASR above floor" is how far the re-tuning attack brings the backdoor back
    beyond what it teaches a never-backdoored model (0 for a backdoor as forgotten as one never
    learned)."""
    header = ["defense", "budget", "attacks", "mean CA drop", "mean ASR", "worst ASR"]
    header += ["mean RA-ASR", "RA-ASR above floor", "mean time"]

    def one(v: float | None, kind: str = "pct") -> str:
        return fmt([] if v is None else [v], kind)

    rows = []
    for m in means:
        n = len(m.attacks)
        rows.append(
            [
                m.defense,
                budget_label(m.budget),
                ", ".join(m.attacks),
                "-" if m.ca_drop is None else f"{100 * m.ca_drop:.2f} pts",
                one(m.asr),
                f"{one(m.worst.asr)} ({m.worst.attack})" if m.worst else "-",
                one(m.retune_asr) + (f" (of {m.retuned})" if 0 < m.retuned < n else ""),
                one(m.above_floor) + (f" (of {m.floored})" if 0 < m.floored < n else ""),
                one(m.time, "s"),
            ]
        )
    return header, rows


def summary_blocks(gs: list[Group]) -> tuple[list[Block], list[DefenseMeans]]:
    """The summary table, and the same restricted to the attacks every defense ran on when the
    defenses cover different attacks (means over different attacks do not compare); with the
    means over those common attacks (for the plot)."""
    summaries = defense_summaries(gs)
    clean = clean_model_sentence(gs)
    if not summaries:
        return ([("p", clean)] if clean else []), []
    means = defense_means(summaries)
    header, table = summary_table(means)
    blocks: list[Block] = [
        (
            "p",
            "**Summary by defense**: means over the attacks each defense ran on (each attack "
            "first averaged over its seeds). CA drop is against the backdoored model each row "
            "started from; RA-ASR above floor is the re-tuned ASR minus the never-backdoored "
            "model's under the same attack (0 when the backdoor comes back no faster than in a "
            "model that never had it).",
        ),
        ("table", header, table),
    ]
    if clean:
        blocks.append(("p", clean))
    covered = [{s.attack for s in items} for items in summaries.values()]
    common = set.intersection(*covered)
    if common and any(c != common for c in covered):
        means = defense_means(summaries, common)
        header, table = summary_table(means)
        names = ", ".join(a for a in first_seen(g.attack for g in gs) if a in common)
        blocks.append(("p", f"The same on the attacks every defense ran on ({names}):"))
        blocks.append(("table", header, table))
    elif not common:
        means = []
    return blocks, means


def clean_model_sentence(gs: list[Group]) -> str | None:
    """What each defense did to the never-backdoored model (attack ``none``), kept out of the
    summary's means: there is nothing to remove there, only accuracy to lose or a false alarm."""
    parts = []
    for g in gs:
        if g.role != "defense" or g.attack != NONE:
            continue
        drop = _attack_summary(g, {}).ca_drop
        found = [bool(r["backdoor_found"]) for r in g.rows if r.get("backdoor_found") is not None]
        verdict = ""
        if found:
            n = sum(found)
            verdict = (
                f", a backdoor reported in {n} of {len(found)} runs"
                if n
                else ", no backdoor reported"
            )
        cost = "CA drop n/a" if drop is None else f"CA drop {100 * drop:.2f} pts"
        parts.append(f"{g.defense} ({budget_label(g.budget)}): {cost}{verdict}")
    if not parts:
        return None
    return "On the never-backdoored model (left out of the means above): " + "; ".join(parts) + "."


def _trained_model(r: dict[str, Any]) -> tuple[str, str, Any] | None:
    """Which model a row measured: (attack or "clean", seed, fingerprint), or None.

    Ceiling and defense rows measured the backdoored model (a defense row its ``before``
    metrics), a floor row the never-backdoored one. The fingerprint is that model's test CA and
    ASR, plus its weights digest where the row recorded one (rows from before the digest carry
    the metrics only, which two different trainings practically never share)."""
    if r["role"] == "floor":
        metrics, what = r, "clean"
    elif r["role"] == "ceiling" and r["attack"] != NONE:
        metrics, what = r, r["attack"]
    elif r["role"] == "defense" and isinstance(r.get("before"), dict):
        metrics, what = r["before"], r["attack"]
    else:
        return None
    # a floor row's ASR is the attack's trigger on the clean model: only its CA names the model
    ca, asr = metrics.get("clean_acc"), None if what == "clean" else metrics.get("asr")
    if ca is None:
        return None
    return what, str(r.get("seed")), (round(ca, 4), None if asr is None else round(asr, 4))


def training_mismatches(gs: list[Group]) -> list[str]:
    """Sentences naming every model that rows of the table measured in more than one training.

    A zoo entry is retrained when the cache is lost, and on another CPU the same config gives
    other weights; rows of one table must then not be read as one experiment. Rows are of one
    training when their metrics agree and their weights digests do not differ (a row without
    a digest joins the digest its metrics agree with)."""
    seen: dict[tuple[str, str], dict[tuple, dict[str | None, set[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(set))
    )
    for g in gs:
        for r in g.rows:
            t = _trained_model(r)
            if t is not None:
                digest = r.get("model_weights_sha256")
                seen[(t[0], t[1])][t[2]][digest].add(f"{g.label} ({r['attack']})")
    out = []
    for (what, seed), by_metrics in seen.items():
        trainings = []  # (metrics, digest or None, rows)
        for metrics, by_digest in by_metrics.items():
            digests = [d for d in by_digest if d]
            legacy = by_digest.get(None, set())
            if len(digests) == 1:
                by_digest[digests[0]] |= legacy
            elif legacy:
                trainings.append((metrics, None, legacy))
            trainings += [(metrics, d, by_digest[d]) for d in digests]
        if len(trainings) < 2:
            continue
        parts = [
            f"CA {100 * m[0]:.2f}%"
            + ("" if m[1] is None else f" / ASR {100 * m[1]:.2f}%")
            + (f" (weights {d})" if d else "")
            + f": {', '.join(sorted(rows))}"
            for m, d, rows in trainings
        ]
        model = "never-backdoored model" if what == "clean" else f"{what} model"
        out.append(
            f"**The {model} of seed {seed} was trained more than once (a lost zoo cache "
            f"retrained, maybe on another CPU): its rows come from {len(trainings)} different "
            "trainings and compare only within one.** " + "; ".join(parts) + "."
        )
    return out
