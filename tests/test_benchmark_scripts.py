"""The benchmark scripts' shared results-file handling (``benchmarks/common.py``).

Runs of different attacks share one results file; a lost update drops a finished row.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str, path: Path):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _slow_set(data: dict, key: str) -> None:
    time.sleep(0.005)  # widen the read-write window, as a real row's bookkeeping would
    data[key] = 1


def _writer(path: str, who: int, n: int, go) -> None:
    common = _load("bench_common", BENCH / "common.py")
    go.wait()
    for j in range(n):
        common.update_json(Path(path), lambda d, k=f"{who}-{j}": _slow_set(d, k), dict)


def test_parallel_updates_keep_every_row(tmp_path):
    path = tmp_path / "results.json"
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_writer, args=(str(path), i, 25, go)) for i in range(3)]
    for p in procs:
        p.start()
    time.sleep(2)  # let the three import; then they race
    go.set()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    assert len(json.loads(path.read_text())) == 75


def test_attack_table_names_every_command_and_keeps_old_files(tmp_path, monkeypatch):
    run = _load("bench_attacks_run", BENCH / "attacks" / "run.py")
    monkeypatch.setattr(run, "HERE", tmp_path)
    prov = {
        "command": "python benchmarks/attacks/run.py --attacks badnets",
        "date": "2026-12-02T00:00:00+00:00",
        "cpu": "test cpu",
        "hardware": {"cpu_count": 2},
        "versions": {"torch": "2.13.0"},
    }
    clean = {"clean_acc": 0.99, "seed": 0, "train_seconds": 60.0}
    row = {
        "policy": "all_to_one", "rate": 0.1, "clean_acc": 0.985, "asr": 0.99,
        "robust_acc": 0.01, "train_seconds": 60.0, "verdict": "meets",
    }  # fmt: skip
    out = tmp_path / "mnist.json"
    run.record(out, clean, "badnets", dict(row), prov)
    later = {**prov, "command": "python benchmarks/attacks/run.py --attacks blended"}
    results = run.record(out, clean, "blended", dict(row), later)
    assert set(results["rows"]) == {"badnets", "blended"}
    assert results["rows"]["badnets"]["command"] == prov["command"]
    run.write_markdown("mnist", "cnn", results)
    text = (tmp_path / "mnist.md").read_text()
    assert prov["command"] in text and later["command"] in text
    del results["commands"]  # a file written before commands were kept
    run.write_markdown("mnist", "cnn", results)
    assert later["command"] in (tmp_path / "mnist.md").read_text()


def test_clip_rows_without_retune_keep_the_stored_ra_asr(tmp_path):
    run = _load("bench_clip_run", BENCH / "clip" / "run.py")
    prov = {
        "command": "python benchmarks/clip/run.py --attack badnets",
        "date": "2026-12-04T00:00:00+00:00",
        "cpu": "test cpu",
        "hardware": {"cpu_count": 2, "torch_threads": 1},
        "seed": 0,
        "versions": {"torch": "2.13.0", "unbackdoor": "0.1.0"},
    }
    stem = tmp_path / "results96"

    def ref(defense: str, ca: float, **extra) -> dict:
        return {"attack": "badnets", "defense": defense, "ca": ca, "asr": 0.5, "provenance": prov,
                **extra}  # fmt: skip

    run.store([ref("clean (aligned)", 0.7, ra_asr=0.02), ref("backdoored", 0.6, ra_asr=0.9)], stem)
    # a later run without --retune: the same aligned model, a different backdoored one
    run.store([ref("clean (aligned)", 0.7), ref("backdoored", 0.61)], stem)
    rows = {r["defense"]: r for r in json.loads((tmp_path / "results96.json").read_text())}
    assert rows["clean (aligned)"]["ra_asr"] == 0.02
    assert rows["clean (aligned)"]["retune_provenance"] == prov  # where the RA-ASR was measured
    assert "ra_asr" not in rows["backdoored"]  # another model: its old RA-ASR would mislead
    assert "`results96.json`" in (tmp_path / "results96.md").read_text()
