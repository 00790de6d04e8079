"""The benchmark report's figures (matplotlib, Agg): CA-vs-ASR trade-off, ASR against the
clean-data budget, re-tuning curves, TBAR's alpha sweeps, true beside inverted triggers, and the
summary per defense. Each ``plot_*`` returns the PNG it wrote, or ``None`` when it has nothing
to draw.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unbackdoor.bench.tables import (
    DefenseMeans,
    Group,
    budget_label,
    first_seen,
    mean_std,
)
from unbackdoor.utils.io import atomic_write


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
    methods = first_seen(g.label for g in points)
    attacks = first_seen(g.attack for g in points)
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
    methods = first_seen(g.defense for g in gs if g.role == "defense")
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
    labels = first_seen(
        g.label + ("" if g.budget is None else f" ({budget_label(g.budget)})") for g in gs
    )
    colors = _colors(labels)
    for ax, (attack, g2) in zip(axes, per_attack.items(), strict=True):
        for g in g2:
            curve = _mean_curve(g.rows)
            if curve is None:
                continue
            label = g.label + ("" if g.budget is None else f" ({budget_label(g.budget)})")
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
        _percent_axes(ax, "alpha", "%", f"{g.attack} / {g.defense} ({budget_label(g.budget)})")
    fig.suptitle(f"Alpha sweeps: {title}")
    return _save(fig, path)


def plot_triggers(gs: list[Group], title: str, path: Path) -> Path | None:
    """Each attack's true trigger beside the trigger each defense inverted (first seed); the
    rows' picture paths are those :func:`~unbackdoor.bench.store.merge_results` rebased."""
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
                found.append((f"{g.defense}\n({budget_label(g.budget)})", Path(inv)))
        if true and found:
            per_attack[attack] = [("true trigger", Path(true)), *found]
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


def _pct(v: float | None) -> float:
    """A fraction as a bar height in percent; NaN (no bar, not a zero) when not measured."""
    return math.nan if v is None else 100 * v


def plot_summary(means: list[DefenseMeans], title: str, path: Path) -> Path | None:
    """Per defense: mean ASR and RA-ASR above the floor (left), mean CA drop (right)."""
    if not means:
        return None
    plt = _plt()
    one_budget = len({repr(m.budget) for m in means}) == 1
    labels = [m.defense if one_budget else f"{m.defense}\n{budget_label(m.budget)}" for m in means]
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
        left.bar([x + off for x in xs], [_pct(getattr(m, key)) for m in means], width=w, label=name)
    right.bar(xs, [_pct(m.ca_drop) for m in means], color="grey")
    for ax in (left, right):
        ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=7)
        ax.grid(axis="y", alpha=0.3)
    left.set_ylabel("% (mean over attacks)")
    left.set_ylim(0, 103)
    left.legend(fontsize=7)
    right.set_ylabel("CA drop (points)")
    fig.suptitle(f"defenses, {', '.join(means[0].attacks)}: {title}", fontsize=9)
    return _save(fig, path)
