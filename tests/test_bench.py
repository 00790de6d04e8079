"""The benchmark grid: config checks, resuming, failed cells, the results store and the report."""

from __future__ import annotations

import json
import math
import time
import warnings
from pathlib import Path

import pytest
import torch

from unbackdoor.bench import ResultStore, load_config, read_results, render_report, run_grid
from unbackdoor.bench import cells as cells_mod
from unbackdoor.bench.config import check_registries
from unbackdoor.bench.executors import ProcessExecutor, make_executor
from unbackdoor.cli import main
from unbackdoor.errors import ConfigError

TINY = {
    "name": "tiny",
    "datasets": ["mnist"],
    "models": ["small_cnn"],
    "attacks": ["badnets"],
    "defenses": ["none", {"name": "ft", "options": {"epochs": 1}}],
    "budgets": [100, 200],
    "seeds": [0],
    "train": {"epochs": 1, "train_samples": 1000, "options": {"batch_size": 64}},
    "retune": {"samples": 100, "epochs": 1, "eval_every": 1},
    "test_samples": 300,
}


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> str:
    """One zoo for the module, so its two tiny models are trained once."""
    return str(tmp_path_factory.mktemp("bench_zoo"))


def tiny(zoo: str, **changes) -> dict:
    return {**TINY, "zoo": zoo, **changes}


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "changes,needle",
    [
        ({"defences": ["ft"]}, "unknown key 'defences' (did you mean 'defenses'?)"),
        ({"attacks": [{"name": "badnets", "rat": 0.1}]}, "unknown key 'rat'"),
        ({"retune": {"sample": 10}}, "retune: unknown key 'sample'"),
        ({"retune": {"seed": 1}}, "each cell re-tunes with its own seed"),
        ({"retune": {"device": "cpu"}}, "the grid's 'device' is used"),
        ({"retune": {"eval_every": 0}}, "eval_every=0"),
        ({"train": {"epoch": 1}}, "train: unknown key 'epoch'"),
        ({"budgets": [5]}, "budgets=5"),
        ({"workers": 0}, "workers=0"),
        ({"executor": "slurm"}, "executor='slurm'"),
        ({"defenses": ["ft", "ft"]}, "lists 'ft' twice"),
    ],
)
def test_config_rejects_bad_keys_and_values(changes, needle):
    with pytest.raises(ConfigError) as e:
        load_config({**TINY, **changes})
    assert needle in str(e.value)


def test_config_from_yaml_names_file_and_defers_registry_checks(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text("datasets: [mnist]\nattacks: badnets\ndefenses: [nosuch]\nbogus: 1\n")
    with pytest.raises(ConfigError, match=r"grid\.yaml: unknown key 'bogus'"):
        load_config(path)
    path.write_text("datasets: [mnist]\nattacks: badnets\ndefenses: [nosuch, none]\n")
    cfg = load_config(path)  # an unknown defense name parses: it may be installed later
    assert [d.name for d in cfg.defenses] == ["nosuch", "none"] and cfg.budgets == [0.05]
    with pytest.raises(ConfigError, match="unknown defense 'nosuch'"):
        run_grid(path, out=tmp_path / "out", quiet=True)
    assert not (tmp_path / "out" / "results.jsonl").exists()


def test_committed_configs_parse():
    configs = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
    found = sorted(configs.glob("*.yaml"))
    assert {"quick", "cpu", "gpu", "gpu_short"} <= {p.stem for p in found}
    for path in found:
        cfg = load_config(path)
        assert cfg.name == path.stem
        check_registries(cfg)  # every attack, model and defense option is a real one


# ----------------------------------------------------------------------------- grid
def _counting(monkeypatch, fail_after: int | None = None) -> list[str]:
    """Wrap every role so that calls are counted (and Ctrl-C is simulated after some)."""
    calls: list[str] = []
    for role, fn in list(cells_mod.ROLES.items()):

        def wrapped(cell, fn=fn):
            if fail_after is not None and len(calls) >= fail_after:
                raise KeyboardInterrupt
            calls.append(cell.key)
            return fn(cell)

        monkeypatch.setitem(cells_mod.ROLES, role, wrapped)
    return calls


def test_interrupted_grid_resumes_without_recomputing(tmp_path, zoo, monkeypatch):
    out = tmp_path / "grid"
    with monkeypatch.context() as m:
        first = _counting(m, fail_after=1)
        with pytest.raises(KeyboardInterrupt):
            run_grid(tiny(zoo), out=out, quiet=True)
    assert len(first) == 1
    rows = read_results(out / "results.jsonl")
    assert [r["key"] for r in rows] == first and rows[0]["status"] == "ok"
    grid = json.loads((out / "grid.json").read_text())
    assert grid["runs"][-1]["status"] == "interrupted"

    # --only: just the matching pending cells run; the others wait for a later call
    calls = _counting(monkeypatch)
    some = run_grid(tiny(zoo), out=out, quiet=True, only=["*/ft/n100/*", "*/ft/n200/*"])
    part = list(calls)  # (later wrappers stack on these: copy now)
    assert part and all("/ft/" in k for k in part) and first[0] not in part
    assert some.computed == len(part) and some.skipped == 4 - len(part)
    grid = json.loads((out / "grid.json").read_text())
    assert grid["runs"][-1]["status"] == "partial" and grid["runs"][-1]["deferred"] == 3 - len(part)
    with pytest.raises(ConfigError, match="matches no cell"):
        run_grid(tiny(zoo), out=out, quiet=True, only="*/fine-tune/*")

    second = _counting(monkeypatch)
    result = run_grid(tiny(zoo), out=out, quiet=True)
    assert result.cells == 4 and result.skipped == 1 + len(part)
    assert result.computed == 3 - len(part)
    assert first[0] not in second and len(second) == 3 - len(part)
    assert not set(part) & set(second)
    rows = ResultStore(out / "results.jsonl").read()
    assert len(rows) == 4 and len({r["key"] for r in rows}) == 4
    assert all(r["status"] == "ok" for r in rows)
    by_role = {r["role"]: r for r in rows}
    assert set(by_role) == {"ceiling", "floor", "defense"}
    bd = by_role["ceiling"]
    assert bd["asr"] > 0.5 and bd["retune_asr"] is not None and len(bd["retune_curve"]) >= 2
    assert (out / bd["true_trigger"]).is_file() and "torch" in bd["versions"]
    ft = next(r for r in rows if r["defense"] == "ft" and r["budget"] == 200)
    assert ft["clean_samples_used"] == 200 and ft["der"] is not None
    assert ft["before"]["asr"] == pytest.approx(bd["asr"])
    assert len(bd["model_weights_sha256"]) == 16
    assert ft["model_weights_sha256"] == bd["model_weights_sha256"]
    assert by_role["floor"]["model_weights_sha256"] != bd["model_weights_sha256"]
    assert ft["defense_time"] > 0 and "peak_memory_mb" in ft

    third = _counting(monkeypatch)
    again = run_grid(tiny(zoo), out=out, quiet=True)
    assert third == [] and again.skipped == 4 and again.computed == 0

    # --rerun: the matching cells run again, the rest stay done
    fourth = _counting(monkeypatch)
    forced = run_grid(tiny(zoo), out=out, quiet=True, rerun="*/ft/*200*")
    assert forced.computed == 1 and len(fourth) == 1 and "/ft/" in fourth[0]
    fifth = _counting(monkeypatch)  # the ceiling too (a zoo model trained again)
    forced = run_grid(tiny(zoo), out=out, quiet=True, rerun="*/none/*")
    assert forced.computed == 1 and len(fifth) == 1 and "/none/" in fifth[0]


def test_failed_cell_is_recorded_and_grid_goes_on(tmp_path, zoo, monkeypatch):
    real = cells_mod.purify

    def purify(cell, path, manifest):
        if cell.defense.id == "broken":
            raise RuntimeError("boom in the defense")
        return real(cell, path, manifest)

    monkeypatch.setattr(cells_mod, "purify", purify)
    cfg = tiny(
        zoo,
        defenses=[
            {"name": "ft", "options": {"epochs": 1}, "label": "broken"},
            {"name": "ft", "options": {"epochs": 1}},
        ],
        budgets=[100],
        floor=False,
    )
    out = tmp_path / "grid"
    result = run_grid(cfg, out=out, quiet=True)
    assert result.computed == 3 and result.failed == 1
    rows = {r["defense"]: r for r in read_results(out / "results.jsonl")}
    assert rows["broken"]["status"] == "error"
    assert "RuntimeError: boom in the defense" in rows["broken"]["error"]
    assert "boom in the defense" in rows["broken"]["traceback"]
    assert rows["ft"]["status"] == "ok" and rows["none"]["status"] == "ok"
    # the report lists the failure; a rerun retries only the failed cell
    files = render_report(out / "results.jsonl", out / "report")
    assert "Failed cells (1)" in files.markdown.read_text()
    calls = _counting(monkeypatch)
    again = run_grid(cfg, out=out, quiet=True)
    assert again.computed == 1 and len(calls) == 1 and "/broken/" in calls[0]


def test_cli_bench_and_report(tmp_path, zoo, capsys):
    import yaml

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny(zoo, defenses=["none"], floor=False)))
    out = tmp_path / "grid"
    assert main(["bench", str(path), "--out", str(out), "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cells"] == 1 and summary["failed"] == 0
    code = main(["report", str(out / "results.jsonl"), "--out", str(out / "report")])
    assert code == 0 and (out / "report" / "report.md").is_file()
    path.write_text("datasets: [mnist]\nattacks: [badnets]\ndefenses: [ft]\nseed: [1]\n")
    assert main(["bench", str(path), "--out", str(out)]) == 2
    assert "unknown key 'seed' (did you mean 'seeds'?)" in capsys.readouterr().err


# ----------------------------------------------------------------------------- executors
def test_pipelined_grid_queues_cells_behind_their_models(tmp_path, capsys):
    """Two worker processes, an empty zoo: the models and the cells share one queue (a cell
    waits on the zoo lock for a model another worker trains); each model is trained once."""
    zoo = tmp_path / "zoo"
    cfg = tiny(str(zoo), defenses=["none", {"name": "ft", "options": {"epochs": 1}}], budgets=[100])
    result = run_grid(cfg, out=tmp_path / "grid", workers=2)
    assert result.computed == 3 and result.failed == 0
    assert "training 2 models for the zoo, then the cells" in capsys.readouterr().err
    entries = [p for p in zoo.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 2 and all((p / "zoo.json").is_file() for p in entries)
    grid = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert grid["runs"][-1]["models_trained"] == 2


def test_pipelined_grid_queues_cells_whose_models_are_ready_first(tmp_path, monkeypatch):
    """The queue: the models to train, then the cells, costliest first (a long cell must not
    start last and run alone), each cell listing the models in the queue it waits for (here
    only the clean twin is to be trained, which only the floor cell needs)."""
    import unbackdoor.bench.grid as grid_mod

    seen, needs = [], []

    class Recorder:
        pipelined = True

        def describe(self) -> str:
            return "recorder"

        def run(self, fn, jobs, after=None):
            seen.extend(jobs)
            needs.extend(after)
            return iter(())

    monkeypatch.setattr(grid_mod, "make_executor", lambda *a, **k: Recorder())
    real = grid_mod._models_to_train
    monkeypatch.setattr(
        grid_mod,
        "_models_to_train",
        lambda pending, run: [j for j in real(pending, run) if j.attack is None],
    )
    cfg = tiny(str(tmp_path / "zoo"), defenses=["none", "ft", "bibau"], budgets=[100, 200])
    run_grid(cfg, out=tmp_path / "grid", quiet=True)
    model, cells = seen[0], seen[1:]
    assert type(model).__name__ == "ModelJob" and model.attack is None and len(cells) == 6
    assert needs == [[], [], [], [], [], [], [0]]  # the floor cell waits for the twin
    # the costliest first: BI-BAU, larger budget first, then FT, then the ceiling and the
    # floor, which only evaluate (in the grid's order)
    order = [(c.role, c.defense_id, c.budget) for c in cells]
    assert order == [
        ("defense", "bibau", 200),
        ("defense", "bibau", 100),
        ("defense", "ft", 200),
        ("defense", "ft", 100),
        ("ceiling", "none", None),
        ("floor", "floor", None),
    ]


def test_a_model_that_fails_to_train_fails_its_queued_cells_without_retraining(
    tmp_path, monkeypatch
):
    """Pipelined: the cells queued behind a model whose training failed fail at once with its
    error, instead of each training it again; the next run tries the model again."""
    from unbackdoor.bench.cells import ModelJob

    tries = []

    def broken(self, path):
        tries.append(self.attack)
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(ModelJob, "_make", broken)
    cfg = tiny(str(tmp_path / "zoo"), budgets=[100])
    result = run_grid(cfg, out=tmp_path / "grid", quiet=True)
    assert sorted(tries, key=str) == sorted([None, "badnets"], key=str)  # each model once
    rows = read_results(tmp_path / "grid" / "results.jsonl")
    assert result.failed == len(rows) == 3
    assert all("model training failed: RuntimeError: out of memory" in r["error"] for r in rows)
    run_grid(cfg, out=tmp_path / "grid", quiet=True)
    assert len(tries) == 4  # tried again, once per model


def test_process_executor_runs_jobs_and_returns_errors():
    ex = ProcessExecutor(workers=2, threads=1)
    results = dict(ex.run(math.sqrt, [4.0, -1.0, 9.0]))
    assert results[0] == 2.0 and results[2] == 3.0
    assert isinstance(results[1], ValueError)


def test_process_executor_starts_a_job_only_after_its_prerequisites():
    """Job 1 needs job 0 (a cell and the model it waits for): the free worker takes job 2
    instead of sitting on job 1, and job 1 starts only once job 0 has finished."""
    ex = ProcessExecutor(workers=2, threads=1)
    order = [i for i, _ in ex.run(time.sleep, [3.0, 0.0, 0.0], after=[[], [0], []])]
    assert order == [2, 0, 1]
    with pytest.raises(ValueError, match="after has 1 entries for 2 jobs"):
        list(ex.run(time.sleep, [0.0, 0.0], after=[[]]))


def test_process_executor_goes_on_after_a_worker_dies():
    """A job that kills its worker comes back as an error; the jobs after it run on a fresh
    pool instead of all failing with the broken one."""
    ex = ProcessExecutor(workers=1, threads=1)
    results = dict(ex.run(eval, ["1 + 1", "__import__('os')._exit(3)", "2 + 2"]))
    assert results[0] == 2 and results[2] == 4
    assert "terminated abruptly" in str(results[1])


def test_submitit_executor(tmp_path, zoo, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "submitit", None)
    with pytest.raises(ConfigError, match=r"pip install 'unbackdoor\[cluster\]'"):
        make_executor("submitit", 1, None, {}, tmp_path)
    monkeypatch.undo()
    pytest.importorskip("submitit")
    local = {"cluster": "local", "poll_seconds": 0.2, "timeout_min": 5}
    results = dict(
        make_executor("submitit", 1, None, local, tmp_path / "jobs").run(math.sqrt, [4.0, -1.0])
    )
    assert results[0] == 2.0 and "math domain error" in str(results[1])
    # the same grid, its cells handed to submitit's in-process debug scheduler
    cfg = tiny(
        zoo,
        defenses=["none"],
        floor=False,
        executor="submitit",
        executor_options={"cluster": "debug"},
    )
    result = run_grid(cfg, out=tmp_path / "grid", quiet=True)
    assert result.computed == 1 and result.failed == 0
    assert (tmp_path / "grid" / "submitit").is_dir()


def test_cli_bench_takes_the_executor_from_the_command_line(tmp_path, zoo, capsys):
    """``--executor``/``--executor-option`` override the config (no YAML edit for a cluster)."""
    import yaml

    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny(zoo, defenses=["none"], floor=False)))
    out = tmp_path / "out"
    args = ["bench", str(path), "--out", str(out), "--quiet"]
    assert main([*args, "--executor-option", "timeout_min=5"]) == 2
    assert "only for executor 'submitit'" in capsys.readouterr().err
    pytest.importorskip("submitit")
    assert main([*args, "--executor", "submitit", "--executor-option", "cluster=debug"]) == 0
    grid = json.loads((out / "grid.json").read_text())
    assert grid["config"]["executor"] == "submitit"
    assert grid["config"]["executor_options"] == {"cluster": "debug"}
    assert (out / "submitit").is_dir() and len(read_results(out / "results.jsonl")) == 1


def test_local_executor_rejects_cluster_options(tmp_path):
    with pytest.raises(ConfigError, match="only for executor 'submitit'"):
        make_executor("local", 1, None, {"timeout_min": 5}, tmp_path)


# ----------------------------------------------------------------------------- store
def _row(key: str, status: str = "ok", **kw) -> dict:
    return {"key": key, "status": status, **kw}


def test_truncated_last_line_is_ignored_then_cut(tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    store.append(_row("a"))
    store.append(_row("b", "error", error="x"))
    with open(store.path, "ab") as f:
        f.write(b'{"key": "c", "status": "o')  # a crash in the middle of a write
    with pytest.warns(RuntimeWarning, match="truncated last line"):
        rows = store.read()
    assert [r["key"] for r in rows] == ["a", "b"]
    with pytest.warns(RuntimeWarning):
        assert store.done_keys() == {"a"}  # error rows are not done
    with pytest.warns(RuntimeWarning, match="dropping a truncated last line"):
        store.append(_row("b"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [r["key"] for r in store.read()] == ["a", "b", "b"]
        assert store.done_keys() == {"a", "b"}
        assert store.path.read_bytes().endswith(b"\n")


def test_corrupt_middle_line_is_skipped(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text('{"key": "a", "status": "ok"}\nnot json\n{"key": "b", "status": "ok"}\n')
    with pytest.warns(RuntimeWarning, match="corrupt line 2"):
        assert [r["key"] for r in ResultStore(path).read()] == ["a", "b"]


# ----------------------------------------------------------------------------- report
def _png(path: Path) -> str:
    from unbackdoor.unlearn import _save_image

    _save_image(torch.rand(1, 8, 8), path)
    return path.name


def _synthetic_rows(base: Path) -> list[dict]:
    rows = []
    true = _png(base / "true.png")
    inv = _png(base / "inverted.png")
    curve = [{"step": 0, "asr": 0.01, "clean_acc": 0.9}, {"step": 8, "asr": 0.5, "clean_acc": 0.9}]
    for seed in (0, 1):
        common = {"dataset": "mnist", "model": "small_cnn", "attack": "badnets", "seed": seed}
        rows.append(
            _row(
                f"ceil{seed}",
                role="ceiling",
                defense="none",
                budget=None,
                clean_acc=0.99,
                asr=1.0,
                robust_acc=0.0,
                retune_asr=1.0,
                retune_curve=curve,
                true_trigger=true,
                **common,
            )
        )
        rows.append(
            _row(
                f"floor{seed}",
                role="floor",
                defense="floor",
                budget=None,
                clean_acc=0.98,
                asr=0.01,
                retune_asr=0.02 + 0.01 * seed,
                retune_curve=curve,
                **common,
            )
        )
        for defense, budget, asr in (("bibau", 500, 0.01), ("bibau", 100, 0.2), ("tbar", 500, 0.5)):
            rows.append(
                _row(
                    f"{defense}{budget}{seed}",
                    role="defense",
                    defense=defense,
                    budget=budget,
                    clean_acc=0.97 - 0.01 * seed,
                    asr=asr,
                    robust_acc=0.9,
                    der=0.98,
                    retune_asr=0.05,
                    retune_curve=curve,
                    defense_time=30.0 + seed,
                    clean_samples_used=budget,
                    inverted_trigger=inv,
                    true_trigger=true,
                    alpha_sweep=[
                        {"alpha": a, "val_asr": 1 - a, "val_clean_acc": 0.9} for a in (0, 0.5, 1)
                    ]
                    if defense == "tbar"
                    else None,
                    alpha=0.5 if defense == "tbar" else None,
                    **common,
                )
            )
    rows.append(_row("broken", "error", error="RuntimeError: boom\nmore", **common))
    return rows


def test_report_renders_from_stored_results(tmp_path):
    store = ResultStore(tmp_path / "results.jsonl")
    store.extend(_synthetic_rows(tmp_path))
    with open(store.path, "ab") as f:
        f.write(b'{"key": "half')
    with pytest.warns(RuntimeWarning, match="truncated"):
        files = render_report(store.path, tmp_path / "report")
    md = files.markdown.read_text()
    for needle in (
        "bibau",
        "tbar",
        "never backdoored (floor)",
        "| badnets | none |",
        "Failed cells",
    ):
        assert needle in md
    assert "96.50 ± 0.71%" in md  # CA mean ± std over the two seeds
    assert "2.50 ± 0.71%" in md  # the floor's RA-ASR
    names = {p.name for p in files.figures}
    assert names == {
        f"{kind}_mnist_small_cnn.png"
        for kind in ("summary", "tradeoff", "budget", "retune", "alpha", "triggers")
    }
    for p in files.figures:
        assert p.is_file() and p.stat().st_size > 1000 and p.name in md
    html = files.html.read_text()
    assert "<table>" in html and "bibau" in html and "<img" in html


def test_report_merges_results_files_later_rows_winning(tmp_path):
    """A grid run in pieces (two scratch folders, say two sessions) reported as one: a cell in
    both files shows the later file's row, each file's pictures stay found, both are named."""
    from unbackdoor.bench import merge_results
    from unbackdoor.cli import main
    from unbackdoor.errors import DataError

    first, second = tmp_path / "part1", tmp_path / "part2"
    ResultStore(first / "results.jsonl").extend(_synthetic_rows(first))
    newer = [r for r in _synthetic_rows(second) if r["key"] == "bibau5000"]
    newer[0]["asr"] = 0.0042
    ResultStore(second / "results.jsonl").extend(newer)
    files = [first / "results.jsonl", second / "results.jsonl"]

    rows = {r["key"]: r for r in merge_results(files)}
    assert rows["bibau5000"]["asr"] == 0.0042
    assert rows["bibau5000"]["results_file"] == str(files[1])
    assert rows["tbar5000"]["results_file"] == str(files[0])
    assert Path(rows["bibau5000"]["inverted_trigger"]) == second / "inverted.png"
    assert all(Path(r["true_trigger"]).is_file() for r in rows.values() if r.get("true_trigger"))
    assert len(rows) == len(read_results(files[0]))  # superseded, not added

    md = render_report(files, tmp_path / "report").markdown.read_text()
    assert "Merged from 2 results files" in md
    assert f"`{files[0]}` ({len(rows) - 1} cells shown)" in md
    assert f"`{files[1]}` (1 cells shown)" in md
    assert "0.71 ± 0.41%" in md  # bibau/500 over seeds: 0.42% (part2) and 1.00% (part1)
    assert "triggers_mnist_small_cnn.png" in md
    # the CLI takes several files, and names a missing one
    code = main(["report", *map(str, files), "--out", str(tmp_path / "cli")])
    assert code == 0 and (tmp_path / "cli" / "report.md").is_file()
    with pytest.raises(DataError, match="part3/results.jsonl: no such results file"):
        render_report([files[0], tmp_path / "part3" / "results.jsonl"], tmp_path / "x")
    with pytest.raises(DataError, match="given twice"):
        render_report([files[0], files[0]], tmp_path / "x")


def test_report_names_rows_measured_on_different_trainings_of_a_zoo_model():
    """A lost zoo cache is retrained (on another CPU: other weights); the report says which
    rows measured which training, and stays quiet when they all measured one."""
    from unbackdoor.bench.tables import groups, training_mismatches

    def row(role, defense, attack="badnets", ca=0.8973, asr=0.9754, digest=None, **kw):
        r = {"status": "ok", "dataset": "cifar10", "model": "fastnet", "attack": attack}
        r |= {"role": role, "defense": defense, "budget": None, "seed": 0, **kw}
        if role == "defense":
            r |= {"before": {"clean_acc": ca, "asr": asr}, "clean_acc": 0.88, "asr": 0.02}
        else:
            r |= {"clean_acc": ca, "asr": asr}
        return r | ({"model_weights_sha256": digest} if digest else {})

    same = [
        row("ceiling", "none"),
        row("defense", "bibau"),
        row("defense", "tbar", digest="abc"),  # a digest beside legacy rows of equal metrics
        row("floor", "floor", ca=0.9011, asr=0.0124),
        row("floor", "floor", attack="blended", ca=0.9011, asr=0.36),  # the trigger's ASR differs
    ]
    assert training_mismatches(next(iter(groups(same).values()))) == []
    retrained = [*same, row("defense", "sau", ca=0.8951, asr=0.9702, digest="def")]
    (text,) = training_mismatches(next(iter(groups(retrained).values())))
    assert "badnets model of seed 0" in text and "2 different trainings" in text
    assert "CA 89.51% / ASR 97.02% (weights def): sau (badnets)" in text
    assert "bibau (badnets)" in text and "tbar (badnets)" in text
    clean_twice = [*same, row("floor", "floor", attack="sig", ca=0.8990, asr=0.05)]
    (text,) = training_mismatches(next(iter(groups(clean_twice).values())))
    assert "never-backdoored model" in text
    digests = [row("ceiling", "none", digest="abc"), row("defense", "ft", digest="xyz")]
    assert len(training_mismatches(next(iter(groups(digests).values())))) == 1


def test_a_rerun_with_another_config_supersedes_the_old_row(tmp_path):
    path = tmp_path / "results.jsonl"
    rows = [
        {"key": "mnist/small_cnn/badnets/bibau/f0.05/s0#aaaa", "status": "ok", "asr": 0.5},
        {"key": "mnist/small_cnn/badnets/ft/f0.05/s0#bbbb", "status": "ok", "asr": 0.9},
        {"key": "mnist/small_cnn/badnets/bibau/f0.05/s0#cccc", "status": "ok", "asr": 0.1},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_results(path)
    assert [r["key"][-4:] for r in got] == ["bbbb", "cccc"]


def test_a_changed_defense_default_makes_the_stored_row_stale(monkeypatch):
    from unbackdoor.bench.config import AttackSpec, DefenseSpec
    from unbackdoor.defenses.ft import FineTuning

    def cell(defense: str) -> cells_mod.Cell:
        return cells_mod.Cell(
            "defense", "mnist", "small_cnn", AttackSpec("badnets"), DefenseSpec(defense),
            0.05, 0, None, None, {}, "out",
        )  # fmt: skip

    row = {"status": "ok", "defense_config": FineTuning(seed=3, device="cpu").config()}
    assert cell("ft").is_done(row)
    assert not cell("ft").is_done({**row, "status": "error"}) and not cell("ft").is_done(None)
    real = FineTuning.config
    monkeypatch.setattr(FineTuning, "config", lambda self: {**real(self), "lr": 0.123})
    assert not cell("ft").is_done(row)  # the stored row ran with the old default
    assert cell("none").is_done({"status": "ok"})


def test_a_model_fitted_attack_takes_the_zoos_clean_twin(tmp_path, monkeypatch):
    """TrojanNN and label-consistent fit their trigger to a clean model: the zoo's own
    never-backdoored twin, trained once and cached, never a private retraining."""
    import unbackdoor.attacks.pipeline as pipeline
    from unbackdoor.bench.cells import ModelJob, TrainSpec

    def no_private_training(*args, **kwargs):
        raise AssertionError("the clean model was trained again inside attack_model")

    monkeypatch.setattr(pipeline, "_clean_model_for", no_private_training)
    spec = TrainSpec(epochs=1, train_samples=600, options={"batch_size": 64})
    job = ModelJob("mnist", "small_cnn", "trojannn", 0, 0.1, train=spec, zoo=str(tmp_path))
    path = job.get()
    twin = ModelJob("mnist", "small_cnn", None, 0, train=spec, zoo=str(tmp_path)).path()
    assert (path / "attack.json").is_file() and (twin / "zoo.json").is_file()
    entries = [p.name for p in tmp_path.iterdir() if p.name != ".locks"]
    assert sorted(entries) == sorted([path.name, twin.name])


def test_zoo_trains_clean_models_beside_attacks_that_need_none():
    """Only the attacks fitted to a clean model wait for the never-backdoored phase: BadNets
    and Blended train beside the clean model, so a 2-process grid keeps both cores busy."""
    from unbackdoor.bench.cells import ModelJob
    from unbackdoor.bench.grid import _model_phases

    clean = ModelJob("cifar10", "fastnet", None, 0)
    badnets = ModelJob("cifar10", "fastnet", "badnets", 0, 0.1)
    blended = ModelJob("cifar10", "fastnet", "blended", 0, 0.1)
    trojan = ModelJob("cifar10", "fastnet", "trojannn", 0, 0.1)
    first, second = _model_phases([trojan, badnets, clean, blended])
    assert first == [badnets, clean, blended] and second == [trojan]
    assert _model_phases([badnets]) == [[badnets], []]


def test_label_consistent_crafts_against_an_adversarially_trained_twin():
    """The label-consistent attack's crafting model is the clean twin trained with FGSM-RS at
    ``crafting_eps`` (a separate zoo entry); TrojanNN keeps the victim's plain recipe."""
    from unbackdoor.bench.cells import ModelJob

    lc = ModelJob("cifar10", "fastnet", "label_consistent", 0, 0.095)
    plain = ModelJob("cifar10", "fastnet", "trojannn", 0, 0.1)
    assert lc.twin().train.options == {"adv_eps": 8.0}
    assert plain.twin().train.options == {} and plain.twin().path() != lc.twin().path()
    off = ModelJob("cifar10", "fastnet", "label_consistent", 0, 0.095, options={"crafting_eps": 0})
    assert off.twin().path() == plain.twin().path()
    pgd = ModelJob(
        "cifar10", "fastnet", "label_consistent", 0, 0.095, options={"crafting_steps": 3}
    )
    assert pgd.twin().train.options == {"adv_eps": 8.0, "adv_steps": 3}


def test_a_zoo_entry_made_with_other_attack_settings_is_refused(tmp_path):
    """The zoo key holds a grid's options, not the attack's defaults: an entry trained before a
    default changed is refused with the setting that differs, never reused silently."""
    from unbackdoor.bench.cells import ModelJob, TrainSpec

    spec = TrainSpec(epochs=1, train_samples=300, options={"batch_size": 64})
    job = ModelJob("mnist", "small_cnn", "badnets", 0, 0.1, train=spec, zoo=str(tmp_path))
    path = job.get()
    assert job.get() == path  # unchanged settings: the cached entry
    record = json.loads((path / "attack.json").read_text())
    record["attack"]["size"] = 5  # as if trained when the default patch size was 5
    (path / "attack.json").write_text(json.dumps(record))
    with pytest.raises(ConfigError, match=r"size: 5 -> 3.*delete that directory"):
        job.get()


def _fake_zoo_entry(job, attack_cfg: dict) -> Path:
    path = job.path()
    path.mkdir(parents=True)
    (path / "zoo.json").write_text(json.dumps({"key": path.name, "config": job.zoo_config()}))
    (path / "attack.json").write_text(json.dumps({"attack": attack_cfg}))
    return path


def test_zoo_check_reads_fit_time_decisions_and_settings_added_later(tmp_path):
    """Input-aware records the generator size it decided at fit time (default 0: decide), which
    matches; a label-consistent entry that predates ``crafting_eps`` was crafted on a plain
    model (``added_later``: 0) and is refused now that the default is 8."""
    from unbackdoor.attacks import create_attack
    from unbackdoor.bench.cells import ModelJob

    ia = ModelJob("cifar10", "fastnet", "input_aware", 0, 0.1, zoo=str(tmp_path))
    _fake_zoo_entry(ia, {**create_attack("input_aware").config(), "gen_width": 32, "gen_depth": 3})
    ia.check_cached_attack()  # no error
    lc = ModelJob("cifar10", "fastnet", "label_consistent", 0, 0.095, zoo=str(tmp_path))
    old = {k: v for k, v in create_attack("label_consistent").config().items()}
    del old["crafting_eps"]
    _fake_zoo_entry(lc, old)
    with pytest.raises(ConfigError, match=r"crafting_eps: 0\.0 -> 8\.0"):
        lc.check_cached_attack()


def test_rows_made_with_other_attack_settings_or_new_options_at_old_values():
    """A stored row is stale when its model's attack config differs from today's; an option
    added later (BI-BAU's ``companion_weight``) at the value that reproduces older rows is not;
    one whose default changed since (``companion``) is kept."""
    from unbackdoor.attacks import create_attack
    from unbackdoor.bench.cells import comparable_defense_config
    from unbackdoor.defenses import create_defense

    cfg = create_defense("bibau").config()
    assert "companion_weight" not in comparable_defense_config(cfg)
    assert comparable_defense_config({**cfg, "companion_weight": 0.25})["companion_weight"] == 0.25
    assert comparable_defense_config(cfg)["companion"] is True
    # a tuple default compares with the list a stored row reads back (BI-BAU's negate_families)
    every = ["mask_pattern", "additive", "warp"]
    assert "negate_families" not in comparable_defense_config({**cfg, "negate_families": every})
    assert comparable_defense_config(cfg)["negate_families"] == ("warp",)
    cell = _cells_for_attack("badnets")
    made = create_attack("badnets", seed=0).config()
    row = {"status": "ok", "attack_config": made}
    assert cell.is_done(row)
    assert not cell.is_done({**row, "attack_config": {**made, "size": 5}})
    assert cell.is_done({"status": "ok"})  # rows older than the record are taken as they are


def _cells_for_attack(attack: str):
    from unbackdoor.bench.cells import Cell, ModelJob
    from unbackdoor.bench.config import AttackSpec

    job = ModelJob("mnist", "small_cnn", attack, 0, 0.1)
    return Cell(
        "ceiling", "mnist", "small_cnn", AttackSpec(attack), None, None, 0, job, None, {}, "out"
    )


def test_report_summarises_each_defense_over_the_attacks_it_ran_on():
    """The summary averages per attack first, measures CA drop against each row's own
    backdoored model, subtracts the floor's RA-ASR, and adds a table on the common attacks."""
    from unbackdoor.bench.tables import groups, summary_blocks

    def row(role, defense, attack, seed=0, **kw):
        r = {"status": "ok", "dataset": "cifar10", "model": "fastnet", "attack": attack}
        return r | {"role": role, "defense": defense, "budget": 0.05, "seed": seed, **kw}

    rows = [
        row("floor", "floor", "badnets", clean_acc=0.90, asr=0.01, retune_asr=0.02),
        row("floor", "floor", "blended", clean_acc=0.90, asr=0.0, retune_asr=1.0),
    ]
    defended = [  # (defense, attack, seed, CA before, CA after, ASR, RA-ASR, time)
        ("bibau", "badnets", 0, 0.90, 0.89, 0.01, 0.05, 100.0),  # badnets: mean ASR 2%,
        ("bibau", "badnets", 1, 0.90, 0.89, 0.03, 0.05, 100.0),  # CA drop 1 point
        ("bibau", "blended", 0, 0.91, 0.88, 0.06, 1.0, 300.0),
        ("ft", "badnets", 0, 0.90, 0.90, 0.5, 0.9, 10.0),
        ("bibau", "none", 0, 0.92, 0.915, None, None, 50.0),  # not an attack: not in the means
    ]
    for defense, attack, seed, before, ca, asr, ra, t in defended:
        rows.append(
            row(
                "defense",
                defense,
                attack,
                seed,
                before={"clean_acc": before},
                clean_acc=ca,
                asr=asr,
                retune_asr=ra,
                defense_time=t,
                **({"backdoor_found": False} if attack == "none" else {}),
            )
        )
    blocks, means = summary_blocks(next(iter(groups(rows).values())))
    assert [(m.defense, m.attacks) for m in means] == [("bibau", ["badnets"]), ("ft", ["badnets"])]
    tables = [b for b in blocks if b[0] == "table"]
    assert len(tables) == 2  # all attacks, then badnets only (the one ft also ran on)
    bibau = next(r for r in tables[0][2] if r[0] == "bibau")
    assert bibau[2] == "badnets, blended"
    assert bibau[3] == "2.00 pts"  # (1 + 3) / 2
    assert bibau[4] == "4.00%"  # (2% + 6%) / 2: per attack first, not per row
    assert bibau[5] == "6.00% (blended)"
    assert bibau[6] == "52.50%" and bibau[7] == "1.50%"  # (3% + 0%) / 2 above the floors
    assert bibau[8] == "200 s"
    clean = [b[1] for b in blocks if b[0] == "p" and "never-backdoored model (left out" in b[1]]
    assert clean and "bibau (5% of train): CA drop 0.50 pts, no backdoor reported" in clean[0]
    rows.pop(1)  # no blended floor: bibau's RA-ASR above floor then covers badnets alone
    blocks, _ = summary_blocks(next(iter(groups(rows).values())))
    assert next(r for r in blocks[1][2] if r[0] == "bibau")[7] == "3.00% (of 1)"
    common_bibau = next(r for r in tables[1][2] if r[0] == "bibau")
    assert common_bibau[2] == "badnets" and common_bibau[4] == "2.00%"
    assert any("every defense ran on (badnets)" in b[1] for b in blocks if b[0] == "p")
