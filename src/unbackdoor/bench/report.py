"""The benchmark report, drawn from results files alone: Markdown, simple HTML and plots.

``render_report("benchmarks/quick/results.jsonl", out="benchmarks/quick/report")`` writes
``report.md``, ``report.html`` and PNG figures: the main table per (data set, model) with
mean +- std over seeds and the never-backdoored floor, a summary per defense over attacks, the
CA-vs-ASR trade-off per method, ASR against the clean-data budget, the re-tuning ASR curves,
TBAR's alpha sweeps when present, and each attack's true trigger beside the triggers the
defenses inverted. The header says how the results were made (command, date, machine, wall
time) from ``grid.json`` beside the results. Several results files (a grid run in pieces, on
other machines or in other sessions) are merged into one report, a later file's row of a cell
replacing an earlier one's, with each file's provenance listed. The numbers are drawn in
:mod:`.tables`, the figures in :mod:`.plots`; this module lays them out as a document.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.bench.plots import (
    plot_alpha,
    plot_budget,
    plot_retune,
    plot_summary,
    plot_tradeoff,
    plot_triggers,
)
from unbackdoor.bench.store import merge_results
from unbackdoor.bench.tables import (
    Block,
    groups,
    main_table,
    md_table,
    summary_blocks,
    training_mismatches,
)
from unbackdoor.utils.io import atomic_write_text, read_json


@dataclass
class ReportFiles:
    """What :func:`render_report` wrote."""

    markdown: Path
    html: Path
    figures: list[Path] = field(default_factory=list)


# ----------------------------------------------------------------------------- document
def _slug(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", "_".join(parts)).strip("_")


def _grid(results: Path) -> dict[str, Any]:
    grid_json = results.parent / "grid.json"
    return read_json(grid_json) if grid_json.is_file() else {}


def _provenance(results: Path, rows: list[dict[str, Any]]) -> str | None:
    """How the rows of one results file were made: command, date, machine, wall time."""
    grid = _grid(results)
    runs = [r for r in grid.get("runs", []) if r.get("computed") or r.get("status") != "finished"]
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
        return text
    if rows:  # no grid.json (a run that was killed hard): what the rows themselves say
        r0 = rows[0]
        times = sorted(t for r in rows for t in (r.get("started"), r.get("finished")) if t)
        span = f" between {times[0]} and {times[-1]}" if times else ""
        return (
            f"{len(rows)} cells computed on host {r0.get('host', '?')} ({r0.get('cpu', '?')}, "
            f"torch {r0.get('versions', {}).get('torch', '?')}){span}; no grid.json beside "
            "the results, so the command and wall time are unknown."
        )
    return None


def _header(files: list[Path], rows: list[dict[str, Any]]) -> list[Block]:
    grid = _grid(files[-1])
    name = grid.get("name") or files[-1].parent.name
    blocks: list[Block] = [("h1", f"Benchmark: {name}")]
    if grid.get("description"):
        blocks.append(("p", grid["description"]))
    if len(files) == 1:
        text = _provenance(files[0], rows)
        if text:
            blocks.append(("p", text))
    else:
        blocks.append(
            (
                "p",
                f"Merged from {len(files)} results files, in this order; where two hold the "
                "same cell, the later file's row is the one shown:",
            )
        )
        for f in files:
            mine = [r for r in rows if r.get("results_file") == str(f)]
            text = _provenance(f, mine) or "no rows."
            blocks.append(("p", f"`{f}` ({len(mine)} cells shown): {text}"))
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
                + (f". Raw rows: `{files[0].name}`." if len(files) == 1 else "."),
            )
        )
    return blocks


def build_blocks(files: list[Path], out: Path) -> tuple[list[Block], list[Path]]:
    """The report of one or several results files (merged in order, see
    :func:`~unbackdoor.bench.store.merge_results`) as blocks, and the figures drawn for it
    in ``out``."""
    rows = merge_results(files)
    blocks = _header(files, rows)
    figures: list[Path] = []
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
            ("triggers", "triggers", plot_triggers),
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


def render_report(results: str | Path | Sequence[str | Path], out: str | Path) -> ReportFiles:
    """Write ``report.md``, ``report.html`` and the figures for ``results`` into ``out``.

    ``results`` is one results file or several, merged in order (a later file's row of a
    cell supersedes an earlier one's): a grid that ran in pieces reported as one.
    """
    from unbackdoor.errors import DataError

    files = [Path(results)] if isinstance(results, (str, Path)) else [Path(r) for r in results]
    if not files:
        raise DataError("no results file given")
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: no such results file")
    if len(set(files)) != len(files):
        raise DataError("a results file is given twice")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    blocks, figures = build_blocks(files, out)
    md = to_markdown(blocks)
    title = blocks[0][1] if blocks and blocks[0][0] == "h1" else "Benchmark"
    md_path = atomic_write_text(out / "report.md", md)
    html_path = atomic_write_text(out / "report.html", to_html(blocks, title))
    return ReportFiles(md_path, html_path, figures)
