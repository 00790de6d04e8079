"""Which class does a network fall back on once it has forgotten its clean task?

Reverse-engineering a trigger asks how cheaply a small change of the *input* reaches each class.
On a network as little robust as a fast CIFAR-10 net, a universal perturbation of L2 size about
1 reaches every class, so a large trigger such as SIG's signal (L2 about 6) is never the cheapest
route, and no input-space statistic names its target (``benchmarks/bibau_dev``, session 16).

This module asks the same question in weight space. RNP (Li et al., "Reconstructive Neuron
Pruning for Backdoor Defense", ICML 2023) observed that gradient *ascent* on a backdoored
network's clean data destroys its clean task quickly but leaves the backdoor intact. We use the
network at that point as a detector: unable to classify any more, it sends most held-out images
to whatever it still represents strongly, and in a backdoored network that is the target. On the
dev models (never the benchmark's) one epoch of ascent left SIG, BadNets and Blended networks
predicting their target for 57%, 58% and 37% of held-out images, a never-backdoored twin
spreading them over three classes (25%, 23%, 21%).

:func:`collapse` repeats the ascent from a few batch orders and averages the per-class shares of
the held-out predictions; :meth:`CollapseResult.verdict` flags the top class when it takes at
least ``min_share`` of the images and ``min_ratio`` times the next class's share.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from unbackdoor.data.dataset import ImageDataset
from unbackdoor.data.loader import endless, iterate
from unbackdoor.utils.config import check
from unbackdoor.utils.precision import autocast
from unbackdoor.utils.progress import progress


@dataclass
class CollapseResult:
    """Per-class shares of the held-out predictions of the clean-unlearned network."""

    shares: torch.Tensor  # K, averaged over the repeats
    per_repeat: list[list[float]]
    steps: list[int]  # ascent steps each repeat took to fall under the accuracy threshold
    accuracy: list[float]  # held-out accuracy where each repeat stopped
    #: K x K counts, summed over the repeats: [true class, class it was sent to] of the
    #: held-out images the collapsed copy gets wrong
    errors: torch.Tensor | None = None
    #: the last repeat's clean-unlearned copy (eval mode), kept with ``keep_model=True``
    model: nn.Module | None = None

    def breadth(self) -> torch.Tensor:
        """Per class k: the share of the other classes whose forgotten images go to k more
        than anywhere else. A backdoor target draws them from every class; a natural sink
        (cat, in CIFAR-10) from its look-alikes only."""
        if self.errors is None:
            raise ValueError("breadth needs the error counts (errors=None)")
        k = self.errors.shape[0]
        rows = self.errors.sum(1) > 0
        top = self.errors.argmax(1)
        return torch.stack(
            [
                ((top == c) & rows).sum() / (rows.sum() - rows[c].long()).clamp_min(1)
                for c in range(k)
            ]
        ).float()

    def ratio(self) -> float:
        """The top class's share over the second's."""
        top2 = self.shares.topk(2).values
        return float(top2[0] / top2[1].clamp_min(1e-6))

    def verdict(
        self, min_share: float, min_ratio: float, min_breadth: float | None = None
    ) -> dict[str, Any]:
        """Is the top class a backdoor target? The tests, kept apart."""
        klass = int(self.shares.argmax())
        share, ratio = float(self.shares[klass]), self.ratio()
        checks = {"share": share >= min_share, "ratio": ratio >= min_ratio}
        out: dict[str, Any] = {"class": klass, "share": share, "ratio": ratio}
        if min_breadth is not None:
            out["breadth"] = float(self.breadth()[klass])
            checks["breadth"] = out["breadth"] >= min_breadth
        return {**out, "checks": checks, "found": all(checks.values())}

    def as_dict(self) -> dict[str, Any]:
        return {
            "shares": self.shares.tolist(),
            "per_repeat": self.per_repeat,
            "steps": self.steps,
            "accuracy": self.accuracy,
            "errors": None if self.errors is None else self.errors.long().tolist(),
        }


@torch.no_grad()
def _predictions(model: nn.Module, data: ImageDataset, device: torch.device, bf16: bool):
    model.eval()
    out = []
    for batch in iterate(data, 256, device=device):
        with autocast(device, bf16):
            out.append(model(batch.x).float().argmax(1).cpu())
    return torch.cat(out)


def collapse(
    model: nn.Module,
    train: ImageDataset,
    held: ImageDataset,
    *,
    threshold: float = 0.5,
    lr: float = 0.001,
    momentum: float = 0.9,
    batch_size: int = 128,
    check_every: int = 1,
    max_steps: int = 400,
    repeats: int = 3,
    seed: int = 0,
    device: torch.device | str = "cpu",
    bf16: bool = False,
    keep_model: bool = False,
) -> CollapseResult:
    """Unlearn ``model``'s clean task on ``train`` (gradient ascent, on a copy; BatchNorm in
    training mode, as RNP does) until its accuracy on ``held`` falls under ``threshold``
    (checked every ``check_every`` steps), then record which classes it predicts on ``held``.
    ``repeats`` runs from different batch orders are averaged. ``model`` is left unchanged.
    Only the parameters that require gradients are changed (all of them if none does).
    ``keep_model`` returns the last repeat's collapsed copy as ``model`` (to invert triggers on
    a network that has forgotten its clean features but not its backdoor).
    """
    o = "collapse"
    check(0 < threshold < 1, o, "threshold", threshold, "in (0, 1)")
    check(lr > 0, o, "lr", lr, "> 0")
    check(repeats >= 1 and check_every >= 1 and max_steps >= 1, o, "repeats", repeats, ">= 1")
    if len(train) == 0 or len(held) == 0:
        raise ValueError("collapse: needs clean images to unlearn and held-out images to score")
    device = torch.device(device)
    k = held.num_classes
    per_repeat, steps, accuracy = [], [], []
    errors = torch.zeros(k, k)
    bar = progress(None, desc="clean-unlearning collapse", total=repeats * max_steps)
    for r in range(repeats):
        net = copy.deepcopy(model).to(device)
        # what the caller froze stays frozen (a CLIP head's temperature and text tower)
        params = [p for p in net.parameters() if p.requires_grad] or list(net.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
        batches = endless(train, batch_size, seed=seed + 1000 * r, device=device)
        for step, batch in enumerate(batches, 1):
            net.train()
            with autocast(device, bf16):
                loss = F.cross_entropy(net(batch.x).float(), batch.y)
            opt.zero_grad(set_to_none=True)
            (-loss).backward()
            opt.step()
            bar.update(1)
            if step % check_every and step < max_steps:
                continue
            pred = _predictions(net, held, device, bf16)
            acc = float((pred == held.labels).float().mean())
            if acc < threshold or step >= max_steps or not torch.isfinite(loss):
                break
        miss = pred != held.labels
        wrong = pred[miss]  # where the images it no longer knows went
        errors.index_put_((held.labels[miss], wrong), torch.ones(len(wrong)), accumulate=True)
        share = torch.bincount(wrong, minlength=k).float() / max(1, len(wrong))
        per_repeat.append([round(float(v), 4) for v in share])
        steps.append(step)
        accuracy.append(round(acc, 4))
    bar.close()
    shares = torch.tensor(per_repeat).mean(0)
    kept = net.eval().requires_grad_(False) if keep_model else None
    return CollapseResult(shares, per_repeat, steps, accuracy, errors, kept)
