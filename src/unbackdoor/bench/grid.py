"""The grid runner: ``run_grid("benchmarks/configs/quick.yaml", out="benchmarks/quick")``.

It expands the config into cells (see :mod:`unbackdoor.bench.cells`), skips every cell that the
results file already holds without an error, trains (or takes from the zoo) the models the
remaining cells need, runs the cells on the configured executor and appends one row per cell to
``<out>/results.jsonl`` as each one finishes. An interrupted grid (Ctrl-C, a killed process, a
crash) loses at most the cells that were running: rerun the same command to resume. Each run of
the grid (command, date, machine, wall time) is recorded in ``<out>/grid.json`` for the report.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.bench.cells import (
    CELLS_DIR,
    ROW_JSON,
    Cell,
    ModelJob,
    build_model,
    resolve_rate,
    run_cell,
)
from unbackdoor.bench.config import NONE, BenchConfig, check_registries, load_config
from unbackdoor.bench.executors import make_executor
from unbackdoor.bench.store import ResultStore, now_iso, provenance
from unbackdoor.errors import ConfigError
from unbackdoor.utils.io import atomic_write_json, read_json
from unbackdoor.utils.progress import progress

RESULTS = "results.jsonl"
GRID_JSON = "grid.json"


@dataclass
class GridResult:
    """What one call of :func:`run_grid` did."""

    out: Path
    results: Path
    cells: int
    computed: int
    skipped: int
    failed: int
    wall_time: float
    rows: list[dict[str, Any]] = field(default_factory=list)  # the rows written by this call


def default_model(dataset: str) -> str:
    from unbackdoor.bench.cells import _load
    from unbackdoor.train.recipes import DEFAULT_MODEL, default_model_for

    if dataset in DEFAULT_MODEL:
        return DEFAULT_MODEL[dataset]
    return default_model_for(dataset, _load(dataset, "test").input_shape[-1])


def expand(cfg: BenchConfig, out: Path, zoo: str | None) -> list[Cell]:
    """Every cell of the grid, in a fixed order (ceiling, floor, then defenses per attack)."""
    cells: list[Cell] = []
    # seed and device come from the cell (and stay out of its key, as before they existed)
    retune = {
        k: v for k, v in dataclasses.asdict(cfg.retune).items() if k not in ("seed", "device")
    }
    common = {
        "retune": retune,
        "out": str(out),
        "test_samples": cfg.test_samples,
        "val_fraction": cfg.val_fraction,
        "device": cfg.device,
        "save_models": cfg.save_models,
    }
    models = {d: [m or default_model(d) for m in cfg.models] for d in cfg.datasets}
    combos = [
        (d, m, a, s)
        for d in cfg.datasets
        for m in models[d]
        for a in cfg.attacks
        for s in cfg.seeds
    ]
    for dataset, model, attack, seed in combos:
        clean = ModelJob(dataset, model, None, seed, train=cfg.train, zoo=zoo, device=cfg.device)
        backdoored = clean
        if attack.name != NONE:
            target = cfg.target if attack.target is None else attack.target
            rate = resolve_rate(
                dataset, attack.name, attack.rate, cfg.poison_rate, target, attack.policy
            )
            backdoored = ModelJob(
                dataset,
                model,
                attack.name,
                seed,
                rate,
                target,
                attack.policy,
                dict(attack.options),
                cfg.train,
                zoo,
                cfg.device,
            )
        base = {
            "dataset": dataset,
            "model": model,
            "attack": attack,
            "seed": seed,
            "backdoored": backdoored,
            **common,
        }
        cells.append(Cell("ceiling", defense=None, budget=None, clean=None, **base))
        if cfg.floor and attack.name != NONE:
            cells.append(Cell("floor", defense=None, budget=None, clean=clean, **base))
        for defense in cfg.defenses:
            if defense.name == NONE:
                continue  # the ceiling row is the defense "none"
            for budget in cfg.budgets:
                cells.append(Cell("defense", defense=defense, budget=budget, clean=None, **base))
    return cells


def _say(msg: str, quiet: bool) -> None:
    if not quiet:
        from tqdm.auto import tqdm

        tqdm.write(msg, file=sys.stderr)


def _pct(v: Any) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def describe_row(row: Mapping[str, Any]) -> str:
    """One line for the log: the cell and its headline numbers (or its error)."""
    name = row["key"].split("#")[0]
    if row.get("status") != "ok":
        return f"{name}: FAILED {row.get('error', '')}"[:300]
    parts = [f"CA {_pct(row.get('clean_acc'))}", f"ASR {_pct(row.get('asr'))}"]
    if row.get("retune_asr") is not None:
        parts.append(f"RA-ASR {_pct(row['retune_asr'])}")
    return f"{name}: {', '.join(parts)} ({row.get('cell_time', 0):.0f} s)"


def _recover(out: Path, store: ResultStore, quiet: bool) -> int:
    """Append finished cells whose row reached ``row.json`` but not the results file."""
    done = store.done_keys()
    recovered = 0
    for path in sorted((out / CELLS_DIR).glob(f"*/{ROW_JSON}")):
        try:
            row = read_json(path)
        except Exception:  # noqa: BLE001  (a half-written folder: the cell runs again)
            continue
        if row.get("status") == "ok" and row.get("key") and row["key"] not in done:
            store.append(row)
            done.add(row["key"])
            recovered += 1
    if recovered:
        _say(f"recovered {recovered} finished cells from their folders", quiet)
    return recovered


def _error_row(cell: Cell, error: str, tb: str | None = None) -> dict[str, Any]:
    from unbackdoor.utils.runinfo import run_info

    return {
        **cell.header(),
        "status": "error",
        "error": error,
        "traceback": tb,
        "finished": now_iso(),
        **run_info(cell.seed),
    }


def _matches(key: str, glob: str) -> bool:
    """A cell key (``dataset/model/attack/defense/budget/seed#hash``) against a glob, with or
    without the hash."""
    return fnmatch.fnmatchcase(key, glob) or fnmatch.fnmatchcase(key.partition("#")[0], glob)


def _models_to_train(cells: list[Cell], run: dict[str, Any]) -> list[ModelJob]:
    """The models the cells need that the zoo lacks, in the order to train them."""
    needed: dict[str, ModelJob] = {}
    for c in cells:
        for job in (c.backdoored, c.clean, c.backdoored and c.backdoored.twin()):
            if job is not None:
                needed.setdefault(str(job.path()), job)
    listed = [j for j in needed.values() if not (j.path() / "zoo.json").is_file()]
    run.update(models_needed=len(needed), models_trained=len(listed))
    return [j for phase in _model_phases(listed) for j in phase]


def _build_models(models: list[ModelJob], executor: Any, quiet: bool) -> dict[str, str]:
    """Train ``models`` before any cell (phase by phase); returns zoo path -> error."""
    failed: dict[str, str] = {}
    if not models:
        return failed
    _say(f"training {len(models)} models for the zoo ({executor.describe()})", quiet)
    results = (  # the executor yields (index, result) as its jobs finish
        (phase[i], result)
        for phase in _model_phases(models)
        if phase
        for i, result in executor.run(build_model, phase)
    )
    for job, result in progress(results, desc="models", total=len(models)):
        _model_done(job, result, failed, quiet)
    return failed


def _model_done(job: ModelJob, result: Any, failed: dict[str, str], quiet: bool) -> None:
    what = f"{job.dataset}/{job.model}/{job.attack or 'clean'}/s{job.seed}"
    if isinstance(result, BaseException):
        result = {"error": f"{type(result).__name__}: {result}"}
    if "error" in result:
        failed[str(job.path())] = result["error"]
        _say(f"model {what}: FAILED {result['error']}", quiet)
    else:
        _say(f"model {what}: ready ({result['seconds']:.0f} s)", quiet)


def grid_job(item: ModelJob | Cell) -> dict[str, Any]:
    """Run in a worker: train a zoo model or run a cell (the pipelined grid mixes both)."""
    return build_model(item) if isinstance(item, ModelJob) else run_cell(item)


def _model_phases(jobs: list[ModelJob]) -> list[list[ModelJob]]:
    """``jobs`` in two phases: first the never-backdoored models and the attacks that do not
    use one (they train side by side), then the attacks fitted to a clean model
    (label-consistent, TrojanNN), which take their twin from the zoo: two processes must not
    train the same twin."""
    fitted = [j for j in jobs if j.attack is not None and j.twin() is not None]
    return [[j for j in jobs if j not in fitted], fitted]


def _cost(cell: Cell) -> tuple[float, float]:
    """How long ``cell`` should take, as a sort key: its defense's ``relative_cost`` (0 for the
    ceiling and floor, which only evaluate), then its clean-data budget."""
    if cell.role != "defense" or cell.defense is None:
        return (0.0, 0.0)
    from unbackdoor.defenses.registry import DEFENSES

    return (DEFENSES.get(cell.defense.name).relative_cost, float(cell.budget or 0))


def queue_order(cells: Sequence[Cell]) -> list[Cell]:
    """``cells`` in the order to start them: the costliest first, so that the cheap cells fill
    the workers at the end instead of one long cell running alone (a stable sort: equals keep
    the grid's order). Whether a cell can start yet is the executor's business: the process
    pool starts one only once the models it needs are trained (:func:`prerequisites`)."""
    return sorted(cells, key=lambda c: tuple(-v for v in _cost(c)))


def prerequisites(jobs: Sequence[ModelJob | Cell]) -> list[list[int]]:
    """For each job of a pipelined queue, the positions of the zoo models in the same queue
    that it needs trained first: a cell its backdoored and clean models, a fitted attack's
    model its clean twin."""
    position = {str(j.path()): k for k, j in enumerate(jobs) if isinstance(j, ModelJob)}

    def needs(item: ModelJob | Cell) -> list[ModelJob | None]:
        if isinstance(item, ModelJob):
            return [item.twin()]
        return [item.backdoored, item.clean]

    return [
        [
            position[str(m.path())]
            for m in needs(item)
            if m is not None and str(m.path()) in position
        ]
        for item in jobs
    ]


def _record_run(out: Path, cfg: BenchConfig, run: dict[str, Any]) -> None:
    path = out / GRID_JSON
    try:
        grid = read_json(path) if path.is_file() else {}
    except Exception:  # noqa: BLE001  (a damaged record is replaced, results are untouched)
        grid = {}
    grid["name"] = cfg.name
    grid["description"] = cfg.description
    grid["config"] = cfg.to_dict()
    grid.setdefault("runs", []).append(run)
    atomic_write_json(path, grid)


def _stop_on_sigterm() -> Callable[[], None]:
    """Make SIGTERM (``kill``) stop the grid like Ctrl-C, so the run is recorded; undo fn."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, stop)
    return lambda: signal.signal(signal.SIGTERM, previous)


def run_grid(
    config: str | Path | Mapping[str, Any] | BenchConfig,
    out: str | Path,
    *,
    quiet: bool = False,
    workers: int | None = None,
    rerun: str | None = None,
    only: str | Sequence[str] | None = None,
    executor: str | None = None,
    executor_options: Mapping[str, Any] | None = None,
) -> GridResult:
    """Run (or resume) the grid of ``config`` into ``out``; returns what this call did.

    ``config`` is a YAML path, a mapping or a :class:`BenchConfig`; ``workers`` overrides the
    config's, and ``executor`` (``local`` or ``submitit``) its executor; ``executor_options``
    are merged over the config's (for submitit: its ``update_parameters``). Cells already in
    ``out/results.jsonl`` without an error are skipped; failed cells are recorded with their
    error and traceback and retried by the next call. ``rerun`` (a
    glob over cell keys such as ``"*/badnets/bibau/*"``) runs matching cells again although
    they are done: for a change of the code that the method's config does not show, or a zoo
    model trained again (``"*/sig/*"``: its ceiling and floor cells too); the new rows
    supersede the old. ``only`` (globs over cell keys) runs just the matching cells now,
    to put the cells that matter first; the rest stay pending for a later call. Ctrl-C stops
    the grid (finished cells stay recorded) and re-raises ``KeyboardInterrupt``.
    """
    from unbackdoor.attacks.zoo import zoo_root

    cfg = load_config(config)
    if workers is not None:
        cfg = dataclasses.replace(cfg, workers=workers).validate()
    if executor is not None or executor_options:
        cfg = dataclasses.replace(
            cfg,
            executor=executor or cfg.executor,
            executor_options={**cfg.executor_options, **(executor_options or {})},
        ).validate()
    check_registries(cfg)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    zoo = str(Path(cfg.zoo).expanduser().resolve()) if cfg.zoo else str(zoo_root())
    pool = make_executor(
        cfg.executor, cfg.workers, cfg.threads, dict(cfg.executor_options), out / "submitit"
    )
    store = ResultStore(out / RESULTS)
    t0 = time.perf_counter()
    run = {**provenance(), "started": now_iso(), "executor": pool.describe()}
    written: list[dict[str, Any]] = []
    status = "interrupted"
    restore = _stop_on_sigterm()
    cells: list[Cell] = []
    skipped = 0
    try:
        _recover(out, store, quiet)
        cells = expand(cfg, out, zoo)
        latest = store.latest()
        pending = [
            c
            for c in cells
            if not c.is_done(latest.get(c.key)) or (rerun is not None and _matches(c.key, rerun))
        ]
        skipped = len(cells) - len(pending)
        globs = [only] if isinstance(only, str) else list(only or [])
        for g in globs:
            if not any(_matches(c.key, g) for c in cells):
                example = cells[0].key.partition("#")[0] if cells else "-"
                raise ConfigError(
                    f"only={g!r} matches no cell of grid {cfg.name!r} (keys look like {example!r})"
                )
        chosen = [not globs or any(_matches(c.key, g) for g in globs) for c in pending]
        later = [c for c, ok in zip(pending, chosen, strict=True) if not ok]
        pending = [c for c, ok in zip(pending, chosen, strict=True) if ok]
        run.update(only=globs or None, deferred=len(later))
        _say(
            f"grid {cfg.name!r}: {len(cells)} cells, {skipped} already done, "
            f"{len(pending)} to run"
            + (f", {len(later)} left for later (only {' '.join(globs)})" if later else "")
            + f" -> {store.path}",
            quiet,
        )
        skipped += len(later)
        models = _models_to_train(pending, run)
        failed_models: dict[str, str] = {}
        jobs: list[ModelJob | Cell] = []
        if pool.pipelined:
            # models first, cells behind them in the same queue: a free worker takes the first
            # job whose models are trained (the zoo's lock keeps a model from being trained
            # twice whatever the executor does)
            jobs = [*models, *queue_order(pending)]
            if models:
                _say(f"training {len(models)} models for the zoo, then the cells", quiet)
        else:
            failed_models = _build_models(models, pool, quiet)
        for c in pending:
            bad = [
                failed_models[str(j.path())]
                for j in (c.backdoored, c.clean)
                if j is not None and str(j.path()) in failed_models
            ]
            if bad:
                row = _error_row(c, f"model training failed: {bad[0]}")
                store.append(row)
                written.append(row)
                _say(describe_row(row), quiet)
            elif not pool.pipelined:
                jobs.append(c)
        if not pool.pipelined:
            jobs = queue_order(jobs)
        desc = "models+cells" if models and pool.pipelined else "cells"
        after = prerequisites(jobs) if pool.pipelined else None
        bar = progress(pool.run(grid_job, jobs, after), desc=desc, total=len(jobs))
        for i, result in bar:
            item = jobs[i]
            if isinstance(item, ModelJob):
                _model_done(item, result, failed_models, quiet)
                continue
            if isinstance(result, BaseException):
                row = _error_row(item, f"{type(result).__name__}: {result}")
            else:
                row = result
            store.append(row)
            written.append(row)
            _say(describe_row(row), quiet)
        status = "partial" if later else "finished"
    finally:
        wall = time.perf_counter() - t0
        failed = sum(r.get("status") != "ok" for r in written)
        run.update(
            finished=now_iso(),
            wall_time=wall,
            status=status,
            cells=len(cells),
            computed=len(written),
            skipped=skipped,
            failed=failed,
        )
        _record_run(out, cfg, run)
        restore()
    _say(
        f"grid {cfg.name!r} done in {wall:.0f} s: {len(written)} cells run "
        f"({failed} failed), {skipped} skipped; results in {store.path}",
        quiet,
    )
    return GridResult(out, store.path, len(cells), len(written), skipped, failed, wall, written)
