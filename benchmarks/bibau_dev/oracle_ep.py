"""Exact purification on a dev model: unlearning with the attack's *true* trigger (an oracle).

    RETUNE=1 DEV_MODEL=dev_lf python benchmarks/bibau_dev/oracle_ep.py TAG N EPOCHS LR [K WEIGHT]

A diagnosis, never a defense and never a choice of defaults: it reads the trigger from the dev
model's ``attack.json``. Min et al. (NeurIPS 2024, "Uncovering, explaining, and mitigating the
superficial safety of backdoor defense") call this EP: fine-tuning on the defender's clean
images plus the same images stamped with the real trigger under their true labels. If EP
leaves a backdoor that re-tuning does not bring back while BI-BAU's found trigger leaves one
that it does, the gap lies in what the inversion finds, not in the unlearning step.
With ``K`` and ``WEIGHT`` the fine-tune also meets a simulated re-tuning attacker (first-order,
after Tamirisa et al.'s tamper-resistant training, 2024): at every step a copy of the model
takes ``K`` Adam steps (lr 5e-4) towards the target on the batch with a quarter of it stamped,
and the stamped images' true-label loss is also taken at the copy's weights (its gradient
applied at the current ones, ``WEIGHT`` times): the backdoor must stay unlearned a few attacker
steps away, not only where the model stands.
With ``FEAT=w`` in the environment the stamped images' activations at every conv group
(``FEAT_LAYERS``, default ``group1,group2,group3``) are also pulled to the clean images' (the
same model, detached), ``w`` times the relative squared distance: the trigger must vanish from
the features where it enters, not only from the output.
With ``TRIGGER=smooth_rand`` or ``TRIGGER=smooth_adv`` the true trigger is *not* used: each
batch is stamped with per-image smooth perturbations (a ``GRID`` x ``GRID`` lattice, default 4,
upsampled bicubically, L_inf ``EPS``, default 0.05), random signs or ``ADV_STEPS`` (default 3)
signed-gradient steps that maximise the feature term (needs ``FEAT``): a blind candidate, scored
like the oracle.
Scored as ``tune.py`` scores (the dev model's 5,000 held-out training images); one line is
appended to ``results.jsonl`` with ``method`` "oracle_ep".
"""

from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call

from unbackdoor.attacks.store import load_attack
from unbackdoor.data import load_dataset
from unbackdoor.eval.metrics import evaluate
from unbackdoor.eval.retune import RetuneConfig, retune_attack
from unbackdoor.inversion.feature_pgd import smooth_feature_pgd
from unbackdoor.models import load_model
from unbackdoor.models.taps import relative_gap
from unbackdoor.train import TrainConfig, train
from unbackdoor.train.path_point import after_attacker

HERE = Path(__file__).resolve().parent
from dev_model import RUNS, split_path  # noqa: E402  (this folder is on sys.path)


def ep_loss(trigger, target: int, k: int = 0, weight: float = 0.0, feat=None):
    """EP's loss on a clean batch (clean and stamped halves under true labels), plus, with
    ``k``, the stamped loss at the weights a simulated attacker reaches in ``k`` steps, plus,
    with ``feat`` (weight, captured activations), the feature-invariance term."""

    def loss(model: torch.nn.Module, batch) -> torch.Tensor:
        x, y = batch.x, batch.y
        stamped = trigger(x, batch.index, model).clamp(0, 1)
        out = F.cross_entropy(model(torch.cat([x, stamped])), torch.cat([y, y]))
        if feat is not None:
            w, acts = feat
            gaps = [relative_gap(a[len(x) :], a[: len(x)].detach()) for a in acts.values()]
            out = out + w * torch.stack(gaps).mean()
        if not k:
            return out
        q = len(x) // 4
        poisoned = torch.cat([stamped[:q], x[q:]]).detach()
        labels = torch.cat([y.new_full((q,), target), y[q:]])
        params = after_attacker(
            model, copy.deepcopy(model), poisoned, labels, steps=k, lr=5e-4, bf16=True
        )
        after = F.cross_entropy(functional_call(model, params, (stamped,)), y)
        return out + weight * after

    return loss


def smooth_stamp(kind: str, names, seed: int = 0):
    """Per-image smooth perturbations (module docstring), as a ``trigger(x, index, model)``:
    the package's :func:`~unbackdoor.inversion.feature_pgd.smooth_feature_pgd` (session 40's
    runs used this script's own copy of the same search, since folded into it), with no steps
    for ``smooth_rand``."""
    eps = float(os.environ.get("EPS", "0.05"))
    grid = int(os.environ.get("GRID", "4"))
    steps = int(os.environ.get("ADV_STEPS", "3")) if kind == "smooth_adv" else 0
    gen = torch.Generator().manual_seed(seed)

    def stamp(x: torch.Tensor, index, model) -> torch.Tensor:
        was = model.training
        model.eval()
        adv = smooth_feature_pgd(
            model, x, eps=eps, grid=grid, steps=steps, layers=names, generator=gen, bf16=True
        )
        model.train(was)
        return adv

    return stamp


def main() -> None:
    tag, n, epochs, lr = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
    k, weight = (int(sys.argv[5]), float(sys.argv[6])) if len(sys.argv) > 6 else (0, 0.0)
    split = torch.load(split_path("cifar10"), weights_only=True)
    train_set = load_dataset("cifar10", "train")
    tr = train_set.subset(split["train_idx"], "cifar10")
    dev = train_set.subset(split["dev_idx"], "cifar10")
    name = os.environ.get("DEV_MODEL", "dev_lf")
    model, _ = load_model(RUNS / name)
    rec = load_attack(RUNS / name)

    def score(m: torch.nn.Module) -> dict:
        x = evaluate(m, dev, trigger=rec.trigger, attack_labels=rec.attack_labels)
        return {"ca": round(x.clean_acc, 4), "asr": round(x.asr, 4)}

    before = score(model)
    clean = tr.sample(n, 7919)  # tune.py's draw
    target = int(rec.attack_labels(torch.zeros(1, dtype=torch.long))[0])
    t0 = time.time()
    cfg = TrainConfig(epochs=epochs, lr=lr, bf16=True, seed=0, schedule="linear", warmup=0.0)
    feat, hooks = None, []
    if os.environ.get("FEAT"):
        acts: dict[str, torch.Tensor] = {}
        names = os.environ.get("FEAT_LAYERS", "group1,group2,group3").split(",")
        for layer in names:
            hook = (lambda n: lambda m, i, o: acts.__setitem__(n, o))(layer)
            hooks.append(model.get_submodule(layer).register_forward_hook(hook))
        feat = (float(os.environ["FEAT"]), acts)
    kind = os.environ.get("TRIGGER", "true")
    if kind == "true":
        trigger = lambda x, index, model: rec.trigger(x, index)  # noqa: E731
    else:
        if feat is None:
            raise SystemExit(f"TRIGGER={kind} needs FEAT (the perturbations meet the feature term)")
        trigger = smooth_stamp(kind, names)
    loss_fn = ep_loss(trigger, target, k, weight, feat)
    train(model, clean, cfg, loss_fn=loss_fn, desc="oracle EP")
    for h in hooks:
        h.remove()
    after = score(model)
    r = retune_attack(model, tr, dev, rec, RetuneConfig(seed=0))
    row = {
        "tag": tag,
        "method": "oracle_ep",
        "model": name,
        "opts": {"epochs": epochs, "lr": lr, "attacker_steps": k, "attacker_weight": weight}
        | ({"feat": feat[0], "feat_layers": names} if feat else {})
        | (
            {"trigger": kind}
            | {k: os.environ[k] for k in ("EPS", "GRID", "ADV_STEPS") if k in os.environ}
            if kind != "true"
            else {}
        ),
        "n": n,
        "draw": 7919,
        "before": before,
        "after": after,
        "drop": round(100 * (before["ca"] - after["ca"]), 2),
        "time": round(time.time() - t0),
        "retune": {"ca": round(r.after.clean_acc, 4), "asr": round(r.after.asr, 4)},
    }
    print(json.dumps(row), flush=True)
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
