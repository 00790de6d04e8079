"""Issue 4's per-attack table (Markdown) from one or more cpu_bibau results files.

    python benchmarks/cpu_bibau/issue4_table.py s31_float32/results.jsonl ... s35/results.jsonl

Merged as ``unbackdoor report`` merges them (a later file's row of a cell wins). One line per
attack: the backdoored model; BI-BAU at 2,500 and at 500 defender images with the found target
and family and the re-tuned ASR (the never-backdoored floor beside the first); I-BAU where it
ran; then the means that the issue's limits read, over the attacks whose backdoored model
reaches the catalogue's ASR target (95% poison-label, 80% clean-label: the issue's "every attack
of the catalogue that reaches its ASR target"; ``benchmarks/attacks/run.py``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from unbackdoor.bench.store import merge_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "attacks"))
from run import CLEAN_LABEL_TARGET, POISON_LABEL_TARGET  # noqa: E402  (the catalogue's targets)

#: the catalogue's clean-label attacks (a results row does not record the poisoning policy)
CLEAN_LABEL = {"sig", "label_consistent"}

HEADER = (
    "| attack | backdoored CA / ASR | BI-BAU 2,500: CA (drop) / ASR | found | re-tuned (floor) "
    "| BI-BAU 500: CA (drop) / ASR | found | re-tuned | I-BAU 2,500: CA (drop) / ASR / re-tuned |"
)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _drop(row: dict[str, Any]) -> float:
    return row["before"]["clean_acc"] - row["clean_acc"]


def _found(row: dict[str, Any]) -> str:
    if not row.get("backdoor_found"):
        return "none"
    report = Path(row.get("cell_dir") or "-") / "report.json"
    diag = json.loads(report.read_text()).get("diagnostics", {}) if report.exists() else {}
    family = (diag.get("family") or "?").replace("mask_pattern", "mask")
    return f"class {row['suspected_target']}, {family}"


def _defended(row: dict[str, Any] | None) -> list[str]:
    if row is None:
        return ["not run", "", ""]
    ca = f"{_pct(row['clean_acc'])} (-{100 * _drop(row):.2f}) / {_pct(row['asr'])}"
    return [ca, _found(row), _pct(row.get("retune_asr"))]


def main(paths: list[str]) -> None:
    by: dict[tuple, dict[str, Any]] = {}
    for r in merge_results(paths):  # cell folders joined to their results file's folder
        if r.get("status") == "ok" and r.get("seed") == 0:
            by[(r["attack"], r["role"], r.get("defense"), r.get("budget"))] = r
    attacks = list(dict.fromkeys(a for a, role, *_ in by if role == "ceiling" and a != "none"))
    print(HEADER)
    print("|---" * HEADER.count(" | ") + "|---|")
    means: dict[Any, list[tuple[float, float]]] = {0.05: [], 500: []}
    for a in attacks:
        base = next(r for k, r in by.items() if k[:2] == (a, "ceiling"))
        floor = next((r for k, r in by.items() if k[:2] == (a, "floor")), None)
        big, small = (by.get((a, "defense", "bibau", b)) for b in (0.05, 500))
        need = CLEAN_LABEL_TARGET if a in CLEAN_LABEL else POISON_LABEL_TARGET
        reaches = base["asr"] >= need
        for budget, r in ((0.05, big), (500, small)):
            if r is not None and reaches:
                means[budget].append((_drop(r), r["asr"]))
        ib = by.get((a, "defense", "ibau", 0.05))
        ibau = "not run" if ib is None else " / ".join(_defended(ib)[0:3:2])
        fl = _pct(floor.get("retune_asr")) if floor else "not run"
        b, s = _defended(big), _defended(small)
        note = "" if reaches else f" (under its {need:.0%} target: not in the means)"
        print(
            f"| {a} | {_pct(base['clean_acc'])} / {_pct(base['asr'])}{note} | {b[0]} | {b[1]} "
            f"| {b[2]} ({fl}) | {s[0]} | {s[1]} | {s[2]} | {ibau} |"
        )
    for budget, vals in means.items():
        if vals:
            drop = 100 * statistics.mean(d for d, _ in vals)
            asr = [x for _, x in vals]
            print(
                f"\n{budget}: {len(vals)} attacks, mean CA drop {drop:.2f} pts, "
                f"mean ASR {_pct(statistics.mean(asr))}, worst ASR {_pct(max(asr))}"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
