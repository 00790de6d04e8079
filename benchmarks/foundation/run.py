"""Foundation benchmark (issue 2): clean accuracy, wall time and throughput on this machine.

    python benchmarks/foundation/run.py            # everything (about 20 minutes on 2 cores)
    python benchmarks/foundation/run.py --only mnist

Writes ``results.json``, ``README.md`` and ``throughput.png`` beside this file. The CIFAR-10 run
trains the fast net with its default recipe (``unbackdoor train --dataset cifar10``) and
reports the last epoch's model, evaluated once on the test set. Throughput is measured for
training and evaluation in fp32 and bf16 on the same model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import md_table, provenance  # noqa: E402

import unbackdoor  # noqa: E402
from unbackdoor.api import build_model  # noqa: E402
from unbackdoor.eval import evaluate  # noqa: E402
from unbackdoor.train import TrainConfig, train  # noqa: E402
from unbackdoor.train.recipes import recipe  # noqa: E402
from unbackdoor.utils.io import atomic_write_json, atomic_write_text, read_json  # noqa: E402

HERE = Path(__file__).resolve().parent


def throughput(dataset: str, model_name: str, bf16: bool, n_train: int, n_eval: int) -> dict:
    """Images per second of the training loop and the evaluation loop, same model."""
    data = unbackdoor.load_dataset(dataset, "train")
    test = unbackdoor.load_dataset(dataset, "test", class_names=data.class_names)
    model = build_model(model_name, data)
    cfg = recipe(model_name, bf16=bf16, channels_last=bf16, epochs=1, seed=0)
    sub = data.sample(n_train, 0)
    cfg_steps = TrainConfig(**{**cfg.to_dict(), "max_steps": n_train // cfg.batch_size})
    warm = TrainConfig(**{**cfg.to_dict(), "max_steps": 3})
    train(model, sub, warm, desc="warm-up")
    t0 = time.perf_counter()
    res = train(model, sub, cfg_steps, desc=f"throughput {'bf16' if bf16 else 'fp32'}")
    train_ips = res.train_images / (time.perf_counter() - t0)
    ev = test.sample(n_eval, 0)
    evaluate(model, ev.sample(500, 0), bf16=bf16)  # warm-up
    t0 = time.perf_counter()
    evaluate(model, ev, bf16=bf16, batch_size=1000)
    eval_ips = len(ev) / (time.perf_counter() - t0)
    return {
        "dataset": dataset,
        "model": model_name,
        "dtype": "bf16" if bf16 else "fp32",
        "train_images_per_second": round(train_ips, 1),
        "eval_images_per_second": round(eval_ips, 1),
        "eval_over_train": round(eval_ips / train_ips, 2),
        "batch_size": cfg.batch_size,
    }


def full_run(dataset: str, seed: int) -> dict:
    out = HERE / "runs" / dataset
    t0 = time.perf_counter()
    trained = unbackdoor.train_model(dataset, seed=seed, out=out, overwrite=True)
    wall = time.perf_counter() - t0
    record = read_json(out / "train.json")
    return {
        "dataset": dataset,
        "model": record["model"],
        "seed": seed,
        "clean_acc": trained.metrics.clean_acc,
        "train_seconds": round(trained.result.wall_time, 1),
        "wall_seconds_incl_load_and_eval": round(wall, 1),
        "epochs": trained.config.epochs,
        "train_images_per_second": round(trained.result.images_per_second, 1),
        "config": trained.config.to_dict(),
        "command": f"unbackdoor train --dataset {dataset} --seed {seed} --out RUN",
    }


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["throughput"]
    labels = [f"{r['dataset']}\n{r['model']}\n{r['dtype']}" for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(1.8 * len(rows) + 2, 3.6))
    ax.bar([i - 0.2 for i in x], [r["train_images_per_second"] for r in rows], 0.4, label="train")
    ax.bar([i + 0.2 for i in x], [r["eval_images_per_second"] for r in rows], 0.4, label="eval")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("images / second")
    ax.set_title(f"Throughput on {results['provenance']['hardware']['cpu_count']} CPU cores")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_readme(results: dict) -> None:
    p = results["provenance"]
    acc_rows = [
        [
            r["dataset"],
            r["model"],
            r["epochs"],
            f"{100 * r['clean_acc']:.2f}%",
            f"{r['train_seconds'] / 60:.1f} min",
            r["train_images_per_second"],
            f"`{r['command']}`",
        ]
        for r in results["accuracy"]
    ]
    tp_rows = [
        [
            r["dataset"],
            r["model"],
            r["dtype"],
            r["batch_size"],
            r["train_images_per_second"],
            r["eval_images_per_second"],
            r["eval_over_train"],
        ]
        for r in results["throughput"]
    ]
    text = f"""# Foundation benchmark

Produced by `{p["command"]}` on {p["date"]} ({p["cpu"]}, {p["hardware"]["cpu_count"]} cores,
torch {p["versions"]["torch"]}, no GPU). Raw numbers: `results.json`.

## Clean accuracy and training time (default recipe, last epoch, one test evaluation)

{
        md_table(
            ["data", "model", "epochs", "test accuracy", "training time", "train img/s", "command"],
            acc_rows,
        )
    }

## Throughput of the training and evaluation loops

{
        md_table(
            ["data", "model", "dtype", "batch", "train img/s", "eval img/s", "eval / train"],
            tp_rows,
        )
    }

![throughput](throughput.png)
"""
    if results.get("attempts"):
        text += (
            "\n## Earlier attempts (kept for honesty)\n\n"
            + "\n".join(f"- {a}" for a in results["attempts"])
            + "\n"
        )
    atomic_write_text(HERE / "README.md", text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", choices=["mnist", "cifar10", "throughput"], default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    path = HERE / "results.json"
    results = read_json(path) if path.exists() else {"accuracy": [], "throughput": []}
    torch.set_num_threads(torch.get_num_threads())
    if args.only in (None, "mnist", "cifar10"):
        for ds in ["mnist", "cifar10"] if args.only is None else [args.only]:
            row = full_run(ds, args.seed)
            results["accuracy"] = [r for r in results["accuracy"] if r["dataset"] != ds] + [row]
            print(row, file=sys.stderr)
    if args.only in (None, "throughput"):
        results["throughput"] = [
            throughput("cifar10", "fastnet", bf16, 4096, 5000) for bf16 in (False, True)
        ] + [throughput("mnist", "small_cnn", bf16, 8192, 10000) for bf16 in (False, True)]
    results["provenance"] = provenance(args.seed)
    atomic_write_json(path, results)
    if results["throughput"]:
        plot(results, HERE / "throughput.png")
    write_readme(results)


if __name__ == "__main__":
    main()
