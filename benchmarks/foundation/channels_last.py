"""Why ``create_model`` stores every registered model's weights channels-last (NHWC).

    python benchmarks/foundation/channels_last.py     # a few minutes on a 2-core CPU

Times, on this machine with one thread, for every registered model: one training step (train
mode, forward and backward into the weights, the recipe's batch or 64 for the ResNet) and one
inversion step (eval mode, frozen weights, the gradient with respect to the input only, 320
images: ten candidate classes times the inversion's batch of 32), float32, with the weights in
NCHW (PyTorch's default) and in NHWC, and the largest difference between the two layouts'
eval-mode outputs. Rows are kept per CPU capability in ``channels_last.json`` and rendered into
``channels_last.md`` beside this file, so a run on another kind of CPU adds its rows.
"""

from __future__ import annotations

import copy
import sys
import time
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import md_table, provenance, update_json  # noqa: E402

import unbackdoor  # noqa: E402
from unbackdoor.utils.io import atomic_write_text  # noqa: E402

HERE = Path(__file__).resolve().parent
#: model -> (channels, side, training batch, repeats)
SHAPES = {
    "small_cnn": (1, 28, 128, 9),
    "narrow_resnet": (3, 32, 128, 5),
    "fastnet": (3, 32, 256, 3),
    "preact_resnet18": (3, 32, 64, 2),
}
LAYOUTS = {"nchw": torch.contiguous_format, "nhwc": torch.channels_last}


def seconds(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def train_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    net.train()
    net.requires_grad_(True)
    net.zero_grad()
    F.cross_entropy(net(x), y).backward()


def inversion_step(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    net.eval()
    net.requires_grad_(False)
    F.cross_entropy(net(x.clone().requires_grad_(True)), y).backward()


def measure(name: str) -> dict:
    c, side, batch, repeats = SHAPES[name]
    torch.manual_seed(0)
    model = unbackdoor.create_model(name, 10, in_channels=c, input_size=(side, side))
    images = torch.rand(batch, c, side, side)
    labels = torch.randint(0, 10, (batch,))
    probe = torch.rand(320, c, side, side)
    probe_labels = torch.randint(0, 10, (320,))
    row, outputs = {}, {}
    for layout, fmt in LAYOUTS.items():
        net = copy.deepcopy(model).to(memory_format=fmt)
        with torch.no_grad():  # before any training step moves the BN statistics
            outputs[layout] = net.eval()(probe)

        train = partial(train_step, net, images, labels)
        row[f"train_{layout}_s"] = round(seconds(train, repeats), 4)
        invert = partial(inversion_step, net, probe, probe_labels)
        row[f"invert_{layout}_s"] = round(seconds(invert, repeats), 4)
    row["train_speedup"] = round(row["train_nchw_s"] / row["train_nhwc_s"], 2)
    row["invert_speedup"] = round(row["invert_nchw_s"] / row["invert_nhwc_s"], 2)
    row["max_output_diff"] = float((outputs["nchw"] - outputs["nhwc"]).abs().max())
    row["train_batch"] = batch
    return row


def main() -> None:
    torch.set_num_threads(1)
    meta = {"capability": torch.backends.cpu.get_cpu_capability(), **provenance(0)}
    models = {}
    for name in SHAPES:
        models[name] = measure(name)
        print(name, models[name], flush=True)

    def put(rows: dict) -> None:
        rows[meta["capability"]] = {**meta, "models": models}

    rows = update_json(HERE / "channels_last.json", put, dict)
    table = md_table(
        [
            "CPU capability",
            "model",
            "training step NCHW / NHWC (s)",
            "inversion step NCHW / NHWC (s)",
            "speed-up (training, inversion)",
            "largest output difference",
            "date",
        ],
        [
            [
                cap,
                f"{name} (batch {m['train_batch']})",
                f"{m['train_nchw_s']} / {m['train_nhwc_s']}",
                f"{m['invert_nchw_s']} / {m['invert_nhwc_s']}",
                f"{m['train_speedup']}x, {m['invert_speedup']}x",
                f"{m['max_output_diff']:.1e}",
                r["date"][:10],
            ]
            for cap, r in sorted(rows.items())
            for name, m in r["models"].items()
        ],
    )
    atomic_write_text(
        HERE / "channels_last.md",
        "# Weights in NCHW against NHWC (channels-last) on this project's CPUs\n\n"
        "Produced by `python benchmarks/foundation/channels_last.py` (raw rows: "
        "`channels_last.json`), one thread, float32. The inversion step is a forward and a "
        "backward into the input only (320 images: ten classes times the inversion's batch), "
        "as trigger inversion runs it. `unbackdoor.create_model` stores weights NHWC since "
        "session 28 (the training recipes already trained NHWC; defenses on a loaded model ran "
        "NCHW); saved artifacts are contiguous either way.\n\n" + table + "\n",
    )


if __name__ == "__main__":
    main()
