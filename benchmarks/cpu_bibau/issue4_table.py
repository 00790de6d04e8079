"""Issue 4's per-attack table (Markdown) from one or more cpu_bibau results files.

    python benchmarks/cpu_bibau/issue4_table.py s31_float32/results.jsonl ... s35/results.jsonl

Merged as ``unbackdoor report`` merges them (a later file's row of a cell wins). One line per
attack: the backdoored model; BI-BAU at 2,500 and at 500 defender images with the found target
and family and the re-tuned ASR (the never-backdoored floor beside the first); I-BAU where it
ran (the backdoored model's CA and ASR are those the 2,500-image BI-BAU row measured; a cell
of another training of that model is marked "other training"); then the means that the
issue's limits read, over the attacks whose backdoored model reaches the catalogue's ASR
target (95% poison-label, 80% clean-label: the issue's "every attack of the catalogue that
reaches its ASR target"; ``benchmarks/attacks/run.py``).

A second table sets BI-BAU beside I-BAU wherever both ran, with 2,500 images, on the same
weights (matched by their SHA-256, whatever file each row came from), with the issue's reading:
BI-BAU's ASR lower (within 0.5 points: a tie), its re-tuned ASR lower (not readable where the
never-backdoored model re-tunes to 95% or more), its defense time at most twice I-BAU's.
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


def _paren(text: str) -> str:
    return f" ({text})" if text else ""


def _other_training(row: dict[str, Any] | None, ref: dict[str, Any], key: str = "") -> str:
    """ "other training" when ``row`` was measured on another training than ``ref``'s model:
    other weights, or (``key="cpu"``, for a floor: a never-backdoored model, whose weights say
    nothing of the attack's) another CPU, where the zoo was trained again."""
    key = key or "model_weights_sha256"
    theirs, ours = (row or {}).get(key), ref.get(key)
    return "other training" if theirs and ours and theirs != ours else ""


#: ASR differences under this are called ties; floors at or above FLAT_FLOOR make completeness
#: unreadable (the re-tuning attack teaches a never-backdoored model the trigger anyway)
TIE, FLAT_FLOOR = 0.005, 0.95


def _versus(a: float, b: float) -> str:
    return "tie" if abs(a - b) < TIE else ("better" if a < b else "worse")


def versus_ibau(rows: list[dict[str, Any]]) -> None:
    """Print BI-BAU beside I-BAU (2,500 images) on every set of weights both ran on."""
    runs: dict[tuple, dict[str, Any]] = {}
    floors: dict[Any, dict[str, Any]] = {}
    for r in rows:
        if r["role"] == "floor":  # by machine too: the zoo is trained again on each
            floors[r["attack"]] = floors[(r["attack"], r.get("cpu"))] = r
        elif r["role"] == "defense" and r.get("budget") == 0.05 and r.get("model_weights_sha256"):
            runs[(r["attack"], r.get("model_weights_sha256"), r["defense"])] = r
    head = (
        "| attack (weights) | backdoored CA / ASR | BI-BAU: CA (drop) / ASR / re-tuned / time "
        "| I-BAU: CA (drop) / ASR / re-tuned / time | floor | ASR | completeness | time ratio |"
    )
    print("\n" + head + "\n" + "|---" * (head.count(" | ") + 1) + "|")
    for (attack, sha, defense), bi in runs.items():
        ib = runs.get((attack, sha, "ibau"))
        if defense != "bibau" or ib is None:
            continue
        floor = floors.get((attack, bi.get("cpu")), floors.get(attack, {})).get("retune_asr")
        cells = []
        for r in (bi, ib):
            cells.append(
                f"{_pct(r['clean_acc'])} (-{100 * _drop(r):.2f}) / {_pct(r['asr'])} / "
                f"{_pct(r.get('retune_asr'))} / {r['defense_time']:.0f} s"
            )
        if floor is None or bi.get("retune_asr") is None or ib.get("retune_asr") is None:
            complete = "no floor" if floor is None else "not re-tuned"
        elif floor >= FLAT_FLOOR:
            complete = "not readable"
        else:
            complete = _versus(bi["retune_asr"], ib["retune_asr"])
        ratio = bi["defense_time"] / ib["defense_time"]
        before = bi["before"]
        print(
            f"| {attack} (`{sha[:8]}`) | {_pct(before['clean_acc'])} / {_pct(before['asr'])} "
            f"| {cells[0]} | {cells[1]} | {_pct(floor)} | {_versus(bi['asr'], ib['asr'])} "
            f"| {complete} | {ratio:.2f} |"
        )


def main(paths: list[str]) -> None:
    by: dict[tuple, dict[str, Any]] = {}
    rows = [
        r  # cell folders joined to their results file's folder
        for r in merge_results(paths)
        if r.get("status") == "ok" and r.get("seed") == 0
    ]
    for r in rows:
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
        ref = big or small or base
        ibau = "not run" if ib is None else " / ".join(_defended(ib)[0:3:2])
        ibau += _paren(_other_training(ib, ref))
        fl = "not run"
        if floor:
            fl = ", ".join(
                filter(None, [_pct(floor.get("retune_asr")), _other_training(floor, ref, "cpu")])
            )
        b, s = _defended(big), _defended(small)
        s[0] += _paren(_other_training(small, ref))
        note = "" if reaches else f" (under its {need:.0%} target: not in the means)"
        before = ref.get("before", base)
        print(
            f"| {a} | {_pct(before['clean_acc'])} / {_pct(before['asr'])}{note} | {b[0]} "
            f"| {b[1]} | {b[2]} ({fl}) | {s[0]} | {s[1]} | {s[2]} | {ibau} |"
        )
    for budget, vals in means.items():
        if vals:
            drop = 100 * statistics.mean(d for d, _ in vals)
            asr = [x for _, x in vals]
            print(
                f"\n{budget}: {len(vals)} attacks, mean CA drop {drop:.2f} pts, "
                f"mean ASR {_pct(statistics.mean(asr))}, worst ASR {_pct(max(asr))}"
            )
    versus_ibau(rows)


if __name__ == "__main__":
    main(sys.argv[1:])
