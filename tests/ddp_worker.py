"""Run by test_train.py under ``torchrun --nproc_per_node 2``: trains on gloo, writes a digest."""

import hashlib
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from synth import blobs  # noqa: E402
from unbackdoor.models import create_model  # noqa: E402
from unbackdoor.train import TrainConfig, train  # noqa: E402

out = sys.argv[1]
torch.manual_seed(0)
data = blobs(n=256, classes=4, size=16)
model = create_model("small_cnn", 4, in_channels=1, input_size=(16, 16), width=8, hidden=16)
result = train(
    model,
    data,
    TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cpu"),
    checkpoint_dir=os.path.join(out, "ckpt"),
)
digest = hashlib.sha256(
    b"".join(p.detach().numpy().tobytes() for p in model.parameters())
).hexdigest()
rank = os.environ["RANK"]
with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
    f.write(f"{digest} {result.train_images}\n")
