"""Why bf16 requests fall back to float32 on CPUs without fast bf16 (utils/precision.py).

    python benchmarks/foundation/bf16_cpu.py     # about 5 minutes on an AVX2-only CPU

Times, on this machine, one 3x3 convolution (batch 256, 64 channels, 32x32, forward only), one
training step of the fast net (batch 256) and one of the MNIST small CNN (batch 128, its
recipe's batch), channels-last, forward and backward, in float32
and under bf16 autocast (forced with ``UNBACKDOOR_BF16=on`` semantics: the raw torch call, no
fallback). Rows are kept per CPU capability in ``bf16_cpu.json`` and rendered into
``bf16_cpu.md`` beside this file, so a run on another kind of CPU adds its row.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import md_table, provenance, update_json  # noqa: E402

import unbackdoor  # noqa: E402
from unbackdoor.utils.io import atomic_write_text  # noqa: E402

HERE = Path(__file__).resolve().parent


def seconds(fn, dtype_bf16: bool, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype_bf16):
            fn()
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 64, 32, 32)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1)
    net = unbackdoor.create_model("fastnet", 10).to(memory_format=torch.channels_last)
    images = torch.randn(256, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (256,))
    mnist = unbackdoor.load_dataset("mnist", "test").subset(torch.arange(128))
    small = unbackdoor.api.build_model("small_cnn", mnist).to(memory_format=torch.channels_last)
    digits = mnist.float_images().contiguous(memory_format=torch.channels_last)

    def conv_forward() -> None:
        with torch.no_grad():
            conv(x)

    def train_step() -> None:
        net.zero_grad()
        F.cross_entropy(net(images).float(), labels).backward()

    def small_step() -> None:
        small.zero_grad()
        F.cross_entropy(small(digits).float(), mnist.labels).backward()

    row = {"capability": torch.backends.cpu.get_cpu_capability(), **provenance(0)}
    steps = (
        ("conv", conv_forward, 3),
        ("fastnet_step", train_step, 2),
        ("small_cnn_step", small_step, 5),
    )
    for name, fn, repeats in steps:
        fp32, bf16 = seconds(fn, False, repeats), seconds(fn, True, repeats)
        row[name] = {
            "fp32_s": round(fp32, 4),
            "bf16_s": round(bf16, 4),
            "ratio": round(bf16 / fp32, 1),
        }
        print(name, row[name], flush=True)

    def put(rows: dict) -> None:
        rows[row["capability"]] = row

    rows = update_json(HERE / "bf16_cpu.json", put, dict)
    table = md_table(
        [
            "CPU capability",
            "cpu",
            "threads",
            "conv fp32 / bf16 (s)",
            "fast net step fp32 / bf16 (s)",
            "small CNN step fp32 / bf16 (s)",
            "bf16 / fp32 (conv, fast net, small CNN)",
            "date",
        ],
        [
            [
                cap,
                r["cpu"],
                r["hardware"]["torch_threads"],
                f"{r['conv']['fp32_s']} / {r['conv']['bf16_s']}",
                f"{r['fastnet_step']['fp32_s']} / {r['fastnet_step']['bf16_s']}",
                f"{r['small_cnn_step']['fp32_s']} / {r['small_cnn_step']['bf16_s']}",
                " / ".join(f"{r[k]['ratio']}x" for k in ("conv", "fastnet_step", "small_cnn_step")),
                r["date"][:10],
            ]
            for cap, r in sorted(rows.items())
        ],
    )
    atomic_write_text(
        HERE / "bf16_cpu.md",
        "# bf16 against float32 on this project's CPUs\n\n"
        "Produced by `python benchmarks/foundation/bf16_cpu.py` (raw rows: `bf16_cpu.json`). "
        "Where bf16 is many times slower than float32, `unbackdoor.utils.precision` runs bf16 "
        "requests in float32 (`UNBACKDOOR_BF16=on` forces bf16).\n\n" + table + "\n",
    )


if __name__ == "__main__":
    main()
