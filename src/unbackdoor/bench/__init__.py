"""The benchmark: a grid of data sets x models x attacks x defenses x budgets x seeds.

>>> from unbackdoor.bench import run_grid, render_report
>>> run_grid("benchmarks/configs/quick.yaml", out="benchmarks/quick")
>>> render_report("benchmarks/quick/results.jsonl", out="benchmarks/quick/report")

``run_grid`` appends one row per cell to ``results.jsonl`` and resumes where it stopped;
``render_report`` draws the Markdown/HTML report and its plots from that file alone.
"""

from unbackdoor.bench.config import BenchConfig, load_config
from unbackdoor.bench.grid import GridResult, run_grid
from unbackdoor.bench.report import render_report
from unbackdoor.bench.store import ResultStore, merge_results, read_results

__all__ = [
    "BenchConfig",
    "GridResult",
    "ResultStore",
    "load_config",
    "merge_results",
    "read_results",
    "render_report",
    "run_grid",
]
