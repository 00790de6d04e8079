"""The benchmark report, drawn from a results file alone: Markdown, simple HTML and plots.

``render_report("benchmarks/quick/results.jsonl", out="benchmarks/quick/report")`` writes
``report.md``, ``report.html`` and PNG figures: the main table per (data set, model) with
mean +- std over seeds and the never-backdoored floor, a summary per defense over attacks, the
CA-vs-ASR trade-off per method, ASR against the clean-data budget, the re-tuning ASR curves,
TBAR's alpha sweeps when present, and each attack's true trigger beside the triggers the
defenses inverted. The header says how the
results were made (command, date, machine, wall time) from ``grid.json`` beside the results.
"""

from __future__ import annotations

import functools
import html
import math
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.bench.config import NONE
from unbackdoor.bench.store import read_results
from unbackdoor.utils.io import atomic_write, atomic_write_text, read_json

FLOOR_LABEL = "never backdoored (floor)"
CEILING_LABEL = "none"

Block = tuple[Any, ...]  # ("h1"|"h2"|"p", text) | ("table", header, rows) | ("img", path, alt)


@dataclass
class ReportFiles:
    """What :func:`render_report` wrote."""

    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)


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


def _budget_label(budget: Any) -> str:
    if budget is None:
        return "-"
    if isinstance(budget, float):
        return f"{100 * budget:g}% of train"
    return str(budget)


def _order(values: Iterable[Any]) -> list[Any]:
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
        attacks = _order(g.attack for g in gs.values())
        defenses = _order(g.defense for g in gs.values())
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
                _budget_label(g.budget),
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


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


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
    ra = _mean(g.values("retune_asr"))
    floor = floor_ra.get(g.attack)
    above = None if ra is None or floor is None else max(0.0, ra - floor)
    return AttackSummary(
        g.attack,
        _mean(drops),
        _mean(g.values("asr")),
        ra,
        above,
        _mean(g.values("defense_time")),
    )


def defense_summaries(gs: list[Group]) -> dict[tuple[str, Any], list[AttackSummary]]:
    """Per (defense, budget): one :class:`AttackSummary` per attack it ran on."""
    floor_ra = {}
    for g in gs:
        if g.role == "floor" and (m := _mean(g.values("retune_asr"))) is not None:
            floor_ra[g.attack] = m
    out: dict[tuple[str, Any], list[AttackSummary]] = defaultdict(list)
    for g in gs:
        if g.role == "defense":
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
            return _mean([v for s in items if (v := getattr(s, key)) is not None])

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
                _budget_label(m.budget),
                ", ".join(m.attacks),
                "-" if m.ca_drop is None else f"{100 * m.ca_drop:.2f} pts",
                one(m.asr),
                f"{one(m.worst.asr)} ({m.worst.attack})" if m.worst else "-",
                one(m.retune_asr) + (f" (of {m.retuned})" if 0 < m.retuned < n else ""),
                one(m.above_floor),
                one(m.time, "s"),
            ]
        )
    return header, rows


def plot_summary(means: list[DefenseMeans], title: str, path: Path) -> Path | None:
    """Per defense: mean ASR and RA-ASR above the floor (left), mean CA drop (right)."""
    if not means:
        return None
    plt = _plt()
    one_budget = len({repr(m.budget) for m in means}) == 1
    labels = [m.defense if one_budget else f"{m.defense}\n{_budget_label(m.budget)}" for m in means]
    xs = list(range(len(means)))
    fig, (left, right) = plt.subplots(
        1,
        2,
        figsize=(max(6.4, 1.1 * len(means) + 3.5), 3.8),
        layout="constrained",
        gridspec_kw={"width_ratios": [2, 1]},
    )
    w = 0.38
    for off, key, name in (
        (-w / 2, "asr", "ASR after defense"),
        (w / 2, "above_floor", "RA-ASR above floor"),
    ):
        vals = [100 * (getattr(m, key) or 0.0) for m in means]
        left.bar([x + off for x in xs], vals, width=w, label=name)
    right.bar(xs, [100 * (m.ca_drop or 0.0) for m in means], color="grey")
    for ax in (left, right):
        ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    left.set_ylabel("% (mean over attacks)")
    left.set_ylim(0, 103)
    left.legend(fontsize=7)
    right.set_ylabel("CA drop (points)")
    fig.suptitle(f"defenses, {', '.join(means[0].attacks)}: {title}", fontsize=9)
    return _save(fig, path)


def summary_blocks(gs: list[Group]) -> tuple[list[Block], list[DefenseMeans]]:
    """The summary table, and the same restricted to the attacks every defense ran on when the
    defenses cover different attacks (means over different attacks do not compare); with the
    means over those common attacks (for the plot)."""
    summaries = defense_summaries(gs)
    if not summaries:
        return [], []
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
    covered = [{s.attack for s in items} for items in summaries.values()]
    common = set.intersection(*covered)
    if common and any(c != common for c in covered):
        means = defense_means(summaries, common)
        header, table = summary_table(means)
        names = ", ".join(a for a in _order(g.attack for g in gs) if a in common)
        blocks.append(("p", f"The same on the attacks every defense ran on ({names}):"))
        blocks.append(("table", header, table))
    elif not common:
        means = []
    return blocks, means


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


# ----------------------------------------------------------------------------- plots
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    atomic_write(path, lambda p: fig.savefig(p, dpi=110, format="png", bbox_inches="tight"))
    _plt().close(fig)
    return path


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {lab: cmap(i % 10) for i, lab in enumerate(labels)}


def plot_tradeoff(gs: list[Group], title: str, path: Path) -> Path | None:
    """Clean accuracy against ASR, one colour per method, one marker per attack."""
    points = [g for g in gs if g.role != "floor" and g.values("asr") and g.values("clean_acc")]
    if not points:
        return None
    plt = _plt()
    methods = _order(g.label for g in points)
    attacks = _order(g.attack for g in points)
    colors = _colors(methods)
    markers = "osD^vP*Xhp<>"
    fig, ax = plt.subplots(figsize=(6.4, 4.6), layout="constrained")
    for g in points:
        x, y = mean_std(g.values("asr"))[0], mean_std(g.values("clean_acc"))[0]
        ax.scatter(
            100 * x,
            100 * y,
            color=colors[g.label],
            marker=markers[attacks.index(g.attack) % len(markers)],
            s=60,
            edgecolors="black",
            linewidths=0.5,
        )
    for m in methods:
        ax.scatter([], [], color=colors[m], label=m)
    for i, a in enumerate(attacks):
        ax.scatter([], [], color="white", edgecolors="black", marker=markers[i], label=a)
    ax.set_xlabel("ASR after defense (%)")
    ax.set_ylabel("clean accuracy (%)")
    ax.set_title(f"CA vs ASR: {title}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _save(fig, path)


def _by_attack(gs: list[Group]) -> dict[str, list[Group]]:
    out: dict[str, list[Group]] = defaultdict(list)
    for g in gs:
        out[g.attack].append(g)
    return out


def _axes(n: int, width: float = 4.2, height: float = 3.4) -> tuple[Any, list[Any]]:
    plt = _plt()
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.flat)
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _percent_axes(ax: Any, xlabel: str, ylabel: str, title: str) -> None:
    """Labels, a 0-100% y range, a light grid and a small legend."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-3, 103)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def plot_budget(gs: list[Group], title: str, path: Path) -> Path | None:
    """ASR after each defense against the clean samples it used, one panel per attack."""
    per_attack = {
        a: g2
        for a, g2 in _by_attack(gs).items()
        if any(g.role == "defense" and g.values("asr") for g in g2)
    }
    if not per_attack:
        return None
    fig, axes = _axes(len(per_attack))
    methods = _order(g.defense for g in gs if g.role == "defense")
    colors = _colors(methods)
    for ax, (attack, g2) in zip(axes, per_attack.items(), strict=True):
        ticks: set[float] = set()
        for m in methods:
            pts = sorted(
                (mean_std(g.values("clean_samples_used"))[0], mean_std(g.values("asr"))[0])
                for g in g2
                if g.defense == m and g.role == "defense" and g.values("asr")
            )
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "o-", color=colors[m])
                ax.plot([], [], "o-", color=colors[m], label=m)
                ticks.update(p[0] for p in pts)
        ceiling = [g for g in g2 if g.role == "ceiling" and g.values("asr")]
        if ceiling:
            ax.axhline(100 * mean_std(ceiling[0].values("asr"))[0], color="black", ls="--", lw=1)
            ax.plot([], [], "--", color="black", label="no defense")
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(sorted(ticks), [f"{t:.0f}" for t in sorted(ticks)])
        _percent_axes(ax, "clean samples used", "ASR (%)", attack)
    fig.suptitle(f"ASR vs clean-data budget: {title}")
    return _save(fig, path)


def _mean_curve(rows: list[dict[str, Any]]) -> tuple[list[float], list[float]] | None:
    curves = [r.get("retune_curve") for r in rows if r.get("retune_curve")]
    if not curves:
        return None
    steps = [p["step"] for p in curves[0]]
    same = [c for c in curves if [p["step"] for p in c] == steps]
    asr = [
        sum(c[i]["asr"] for c in same) / len(same)
        if all(c[i]["asr"] is not None for c in same)
        else float("nan")
        for i in range(len(steps))
    ]
    return steps, asr


def plot_retune(gs: list[Group], title: str, path: Path) -> Path | None:
    """ASR during the re-tuning attack, one panel per attack (mean over seeds)."""
    per_attack = {a: g2 for a, g2 in _by_attack(gs).items() if any(_mean_curve(g.rows) for g in g2)}
    if not per_attack:
        return None
    fig, axes = _axes(len(per_attack))
    labels = _order(
        g.label + ("" if g.budget is None else f" ({_budget_label(g.budget)})") for g in gs
    )
    colors = _colors(labels)
    for ax, (attack, g2) in zip(axes, per_attack.items(), strict=True):
        for g in g2:
            curve = _mean_curve(g.rows)
            if curve is None:
                continue
            label = g.label + ("" if g.budget is None else f" ({_budget_label(g.budget)})")
            style = {"ceiling": "-", "floor": "--"}.get(g.role, "o-")
            color = {"ceiling": "black", "floor": "gray"}.get(g.role, colors[label])
            ax.plot(curve[0], [100 * v for v in curve[1]], style, color=color, label=label, ms=3)
        _percent_axes(ax, "re-tuning step", "ASR (%)", attack)
    fig.suptitle(f"Re-tuning attack: {title}")
    return _save(fig, path)


def plot_retune_curve(curve: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """One model's re-tuning curve (``RetuneResult.curve``): ASR and CA against the step."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    steps = [p["step"] for p in curve]
    asr = [p.get("asr") for p in curve]
    if all(v is not None for v in asr):
        ax.plot(steps, [100 * v for v in asr], "o-", color="tab:red", label="ASR")
    ax.plot(steps, [100 * p["clean_acc"] for p in curve], "s-", color="tab:blue", label="CA")
    _percent_axes(ax, "re-tuning step", "%", f"Re-tuning attack: {title}")
    return _save(fig, path)


def plot_alpha(gs: list[Group], title: str, path: Path) -> Path | None:
    """TBAR's alpha sweeps on the defender's held-out data (first seed of each cell)."""
    sweeps = [(g, r) for g in gs for r in g.rows[:1] if r.get("alpha_sweep")]
    if not sweeps:
        return None
    fig, axes = _axes(len(sweeps))
    for ax, (g, r) in zip(axes, sweeps, strict=True):
        s = r["alpha_sweep"]
        alphas = [p["alpha"] for p in s]
        ax.plot(alphas, [100 * p["val_asr"] for p in s], "o-", color="tab:red", label="val ASR")
        ax.plot(
            alphas, [100 * p["val_clean_acc"] for p in s], "s-", color="tab:blue", label="val CA"
        )
        if r.get("alpha") is not None:
            ax.axvline(r["alpha"], color="black", ls=":", label=f"chosen {r['alpha']:g}")
        _percent_axes(ax, "alpha", "%", f"{g.attack} / {g.defense} ({_budget_label(g.budget)})")
    fig.suptitle(f"Alpha sweeps: {title}")
    return _save(fig, path)


def plot_triggers(gs: list[Group], title: str, path: Path, base: Path) -> Path | None:
    """Each attack's true trigger beside the trigger each defense inverted (first seed)."""
    from PIL import Image

    per_attack: dict[str, list[tuple[str, Path]]] = {}
    for attack, g2 in _by_attack(gs).items():
        true = next((r["true_trigger"] for g in g2 for r in g.rows if r.get("true_trigger")), None)
        found = []
        for g in g2:
            if g.role != "defense":
                continue
            inv = next((r["inverted_trigger"] for r in g.rows if r.get("inverted_trigger")), None)
            if inv:
                found.append((f"{g.defense}\n({_budget_label(g.budget)})", base / inv))
        if true and found:
            per_attack[attack] = [("true trigger", base / true), *found]
    if not per_attack:
        return None
    plt = _plt()
    ncols = max(len(v) for v in per_attack.values())
    fig, axes = plt.subplots(
        len(per_attack),
        ncols,
        figsize=(1.9 * ncols, 2.2 * len(per_attack) + 0.4),
        squeeze=False,
        layout="constrained",
    )
    for i, (attack, items) in enumerate(per_attack.items()):
        for j in range(ncols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(items):
                ax.axis("off")
                continue
            label, p = items[j]
            if p.is_file():
                with Image.open(p) as im:
                    ax.imshow(im.convert("RGB"), interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center")
            ax.set_title(label, fontsize=7)
            if j == 0:
                ax.set_ylabel(attack, fontsize=9)
    fig.suptitle(f"True vs inverted triggers: {title}", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------- document
def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "_".join(parts)).strip("_")


def _header(results: Path, rows: list[dict[str, Any]]) -> list[Block]:
    grid_json = results.parent / "grid.json"
    grid = read_json(grid_json) if grid_json.is_file() else {}
    runs = [r for r in grid.get("runs", []) if r.get("computed") or r.get("status") != "finished"]
    name = grid.get("name") or results.parent.name
    blocks: list[Block] = [("h1", f"Benchmark: {name}")]
    if grid.get("description"):
        blocks.append(("p", grid["description"]))
    if runs:
        last = runs[-1]
        hw = last.get("hardware", {})
        wall = sum(float(r.get("wall_time") or 0) for r in runs)
        trained = sum(int(r.get("models_trained") or 0) for r in runs)
        needed = max(int(r.get("models_needed") or 0) for r in runs)
        text = (
            f"Produced by `{last.get('command', '?')}` on {last.get('finished', '?')} "
            f"(host {last.get('host', '?')}: {last.get('cpu', '?')}, {hw.get('cpu_count', '?')} "
            f"cores, torch {last.get('versions', {}).get('torch', '?')}; executor "
            f"{last.get('executor', '?')}). Wall time **{wall:.0f} s** ({wall / 60:.1f} min)"
        )
        text += (
            f" over {len(runs)} runs of the grid (resumed)." if len(runs) > 1 else " in one run."
        )
        text += f" The grid needed {needed} models; " + (
            f"{trained} trainings were started in these runs (one a run interrupted resumes "
            "in the next), the rest came from the zoo cache."
            if trained
            else "all came from the zoo cache."
        )
        total = int(runs[-1].get("cells") or 0)
        if runs[-1].get("status") == "partial":
            text += (
                " **The last run ran only the cells matching "
                f"{' '.join(runs[-1].get('only') or [])}: {len(rows)} of {total} cells are "
                "recorded; run the grid without `--only` to finish the rest.**"
            )
        elif runs[-1].get("status") != "finished":
            text += (
                f" **The last run was {runs[-1].get('status')}: {len(rows)} of {total} cells are "
                "recorded; rerun the same command to finish the rest.**"
            )
        blocks.append(("p", text))
    elif rows:  # no grid.json (a run that was killed hard): what the rows themselves say
        r0 = rows[0]
        times = sorted(t for r in rows for t in (r.get("started"), r.get("finished")) if t)
        span = f" between {times[0]} and {times[-1]}" if times else ""
        blocks.append(
            (
                "p",
                f"{len(rows)} cells computed on host {r0.get('host', '?')} ({r0.get('cpu', '?')}, "
                f"torch {r0.get('versions', {}).get('torch', '?')}){span}; no grid.json beside "
                "the results, so the command and wall time are unknown.",
            )
        )
    cfg = grid.get("config") or {}
    rc = cfg.get("retune") or (rows[0].get("config", {}).get("retune") if rows else None)
    if rc:
        blocks.append(
            (
                "p",
                f"RA-ASR: ASR after the re-tuning attack ({rc.get('samples')} training samples, "
                f"{100 * rc.get('poison_rate', 0):g}% poisoned with the attack's own trigger, "
                f"{rc.get('epochs')} epochs, {rc.get('optimizer', 'adam')} lr {rc.get('lr')}). "
                f"The floor row is a never-backdoored model of the same recipe under the same "
                "attack: a backdoor that is really forgotten comes back no faster. DER: "
                "((max(0, ASR drop) - max(0, CA drop)) + 1) / 2 against the backdoored model. "
                "Values are mean ± std over seeds; time is the defense's wall time.",
            )
        )
    if cfg:
        blocks.append(
            (
                "p",
                f"Grid: data sets {cfg.get('datasets')}, attacks "
                f"{[a.get('label') or a['name'] for a in cfg.get('attacks', [])]} at rate "
                f"{cfg.get('poison_rate')} (target {cfg.get('target')}), defenses "
                f"{[d.get('label') or d['name'] for d in cfg.get('defenses', [])]}, budgets "
                f"{cfg.get('budgets')}, seeds {cfg.get('seeds')}"
                + (f", test subset {cfg['test_samples']}" if cfg.get("test_samples") else "")
                + f". Raw rows: `{results.name}`.",
            )
        )
    return blocks


def build_blocks(results: Path, out: Path) -> tuple[list[Block], list[Path]]:
    """The report as blocks (and the figures drawn for it, in ``out``)."""
    rows = read_results(results)
    blocks = _header(results, rows)
    figures: list[Path] = []
    base = results.parent
    for (dataset, model), gs in groups(rows).items():
        title = f"{dataset} / {model}"
        blocks.append(("h2", title))
        header, table = main_table(gs)
        blocks.append(("table", header, table))
        blocks.extend(("p", text) for text in training_mismatches(gs))
        summary, means = summary_blocks(gs)
        blocks.extend(summary)
        slug = _slug(dataset, model)
        p = plot_summary(means, title, out / f"summary_{slug}.png")
        if p is not None:
            figures.append(p)
            blocks.append(("img", p.name, f"defenses on common attacks: {title}"))
        drawers: list[tuple[str, str, Callable[..., Path | None]]] = [
            ("CA vs ASR", "tradeoff", plot_tradeoff),
            ("ASR vs budget", "budget", plot_budget),
            ("re-tuning", "retune", plot_retune),
            ("alpha sweeps", "alpha", plot_alpha),
            ("triggers", "triggers", functools.partial(plot_triggers, base=base)),
        ]
        for alt, prefix, draw in drawers:
            p = draw(gs, title, out / f"{prefix}_{slug}.png")
            if p is not None:
                figures.append(p)
                blocks.append(("img", p.name, f"{alt}: {title}"))
    failed = [r for r in rows if r.get("status") != "ok"]
    if failed:
        blocks.append(("h2", f"Failed cells ({len(failed)})"))
        blocks.append(
            (
                "table",
                ["cell", "error"],
                [[r["key"].split("#")[0], _first_line(r.get("error"))] for r in failed],
            )
        )
    if not rows:
        blocks.append(("p", "No results yet."))
    return blocks, figures


def _first_line(text: str | None, limit: int = 160) -> str:
    return ((text or "?").strip().splitlines() or ["?"])[0][:limit]


def to_markdown(blocks: list[Block]) -> str:
    parts = []
    for b in blocks:
        if b[0] == "h1":
            parts.append(f"# {b[1]}")
        elif b[0] == "h2":
            parts.append(f"## {b[1]}")
        elif b[0] == "p":
            parts.append(b[1])
        elif b[0] == "table":
            parts.append(md_table(b[1], b[2]))
        elif b[0] == "img":
            parts.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(parts) + "\n"


def _inline_html(text: str) -> str:
    t = html.escape(text)
    t = re.sub(r"`([^`]+)`", r"<code>\1</code>", t)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", t)


def to_html(blocks: list[Block], title: str) -> str:
    body = []
    for b in blocks:
        if b[0] in ("h1", "h2"):
            body.append(f"<{b[0]}>{html.escape(b[1])}</{b[0]}>")
        elif b[0] == "p":
            body.append(f"<p>{_inline_html(b[1])}</p>")
        elif b[0] == "table":
            head = "".join(f"<th>{html.escape(str(h))}</th>" for h in b[1])
            rows = "".join(
                "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                for r in b[2]
            )
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            body.append(
                f'<figure><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}">'
                f"<figcaption>{html.escape(b[2])}</figcaption></figure>"
            )
    style = (
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;font-size:0.9em}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}td:first-child,td:nth-child(2){text-align:left}"
        "img{max-width:100%}figcaption{color:#666;font-size:0.85em}"
    )
    return (
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def render_report(results: str | Path, out: str | Path) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and the figures for ``results`` into ``out``."""
    from unbackdoor.errors import DataError

    results = Path(results)
    if not results.is_file():
        raise DataError(f"{results}: no such results file")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks, figures = build_blocks(results, out)
    md = to_markdown(blocks)
    title = blocks[0][1] if blocks and blocks[0][0] == "h1" else "Benchmark"
    md_path = atomic_write_text(out / "report.md", md)
    html_path = atomic_write_text(out / "report.html", to_html(blocks, title))
    return ReportFiles(md_path, html_path, figures)
