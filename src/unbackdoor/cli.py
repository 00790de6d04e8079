"""The ``unbackdoor`` command line: a thin typer layer over :mod:`unbackdoor.api`.

Results go to standard output (a table, or exactly one JSON object with ``--json``); progress bars
and logs go to standard error. Errors are one line unless ``--debug`` is given.
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    name="unbackdoor",
    help="Remove backdoors from trained neural networks.",
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
list_app = typer.Typer(help="List what is registered.", no_args_is_help=True)
app.add_typer(list_app, name="list")

_STATE = {"debug": False}


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
) -> None:
    _STATE["debug"] = debug


def _echo_json(obj: Any) -> None:
    from unbackdoor.utils.io import to_jsonable

    sys.stdout.write(json.dumps(to_jsonable(obj)) + "\n")


def _table(rows: list[tuple[str, str]], title: str | None = None) -> None:
    if title:
        typer.echo(title)
    width = max((len(k) for k, _ in rows), default=0)
    for k, v in rows:
        typer.echo(f"  {k:<{width}}  {v}")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}%"


@app.command(
    epilog="Examples:\n\n  unbackdoor train --dataset mnist --epochs 2 --out runs/mnist\n\n"
    "  unbackdoor train --dataset cifar10 --model fastnet --seed 1 --out runs/c10\n\n"
    "  unbackdoor train --dataset path/to/folder --out runs/mine"
)
def train(
    out: Annotated[Path, typer.Option(help="Output model directory.")],
    dataset: Annotated[
        str,
        typer.Option(
            help="Registered name (mnist, cifar10) or image-folder path with train/ and test/."
        ),
    ] = "mnist",
    model: Annotated[
        str | None,
        typer.Option(
            help="Model name (see `unbackdoor list models`); default depends on the data set."
        ),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs (default: the model's recipe).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed, recorded in the outputs.")] = 0,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--fp32", help="bf16 autocast.")] = None,
    train_samples: Annotated[int | None, typer.Option(help="Train on a seeded subset.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    force: Annotated[bool, typer.Option(help="Overwrite a finished model in OUT.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Train a model; interrupted runs resume from the last finished epoch."""
    from unbackdoor.api import train_model

    if epochs is not None and epochs < 0:
        raise typer.BadParameter(f"must be >= 0, got {epochs}", param_hint="--epochs")
    t = train_model(
        dataset,
        model,
        epochs=epochs,
        seed=seed,
        out=out,
        overwrite=force,
        train_samples=train_samples,
        batch_size=batch_size,
        lr=lr,
        bf16=bf16,
        device=device,
    )
    summary = {
        "out": str(out),
        **t.metrics.to_dict(),
        "wall_time": t.result.wall_time,
        "train_images_per_second": t.result.images_per_second,
        "seed": seed,
    }
    if json_out:
        _echo_json(summary)
    else:
        _table(
            [
                ("clean accuracy", _pct(t.metrics.clean_acc)),
                ("training time", f"{t.result.wall_time:.1f} s"),
                ("images/s", f"{t.result.images_per_second:.0f}"),
                ("saved to", str(out)),
            ],
            title="trained",
        )


@app.command(
    epilog="Examples:\n\n  unbackdoor evaluate runs/mnist\n\n"
    "  unbackdoor evaluate runs/c10 --dataset cifar10 --json\n\n"
    "  unbackdoor evaluate runs/clean --retune --attack-from runs/badnets   # the floor"
)
def evaluate(
    directory: Annotated[Path, typer.Argument(help="Model directory.")],
    dataset: Annotated[str | None, typer.Option(help="Data set (default: the manifest's).")] = None,
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    retune: Annotated[
        bool,
        typer.Option(
            help="Also run the re-tuning attack (fine-tune on "
            "1,000 samples, 1% poisoned) and report its "
            "ASR."
        ),
    ] = False,
    retune_samples: Annotated[int, typer.Option(help="Re-tuning set size.")] = 1000,
    retune_poison_rate: Annotated[float, typer.Option(help="Poisoned share of it.")] = 0.01,
    retune_epochs: Annotated[int, typer.Option(help="Re-tuning epochs.")] = 2,
    retune_lr: Annotated[
        float | None,
        typer.Option(
            help="Re-tuning Adam learning rate (default: 5e-4 for classifiers, 5e-5 for CLIP "
            "models, whose backdoor the classifier rate erodes by itself)."
        ),
    ] = None,
    retune_eval_every: Annotated[
        int | None,
        typer.Option(
            help="Measure ASR and CA every this many re-tuning steps (the curve; default: "
            "before and after only; classifiers, CLIP measures the ends).",
            min=1,
        ),
    ] = None,
    retune_plot: Annotated[
        Path | None, typer.Option(help="Draw the re-tuning curve into this PNG.")
    ] = None,
    attack_from: Annotated[
        Path | None,
        typer.Option(
            help="Measure ASR (and re-tune) with the trigger of this model directory's "
            "attack.json: a never-backdoored model with an attack's trigger gives the "
            "re-tuning floor."
        ),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the re-tuning attack.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Evaluate a model directory: clean accuracy, and ASR/RA when it carries an attack.

    A CLIP model is evaluated zero-shot, with retrieval recall@k: an unbackdoor CLIP directory
    (clip.json), a Hugging Face CLIP directory or an OpenAI / open_clip weights file with its
    tokenizer.json beside it (the last two name no data set: pass --dataset).
    """
    from unbackdoor.api import evaluate_artifact, retune_artifact
    from unbackdoor.clip.model.store import is_clip_source
    from unbackdoor.eval.retune import RetuneConfig

    budget: dict[str, Any] = {
        "samples": retune_samples,
        "poison_rate": retune_poison_rate,
        "epochs": retune_epochs,
        "seed": seed,
    }
    if retune_lr is not None:
        budget["lr"] = retune_lr
    if retune_eval_every is not None:
        budget["eval_every"] = retune_eval_every
    if retune_plot is not None and not retune:
        raise typer.BadParameter("--retune-plot needs --retune", param_hint="--retune-plot")
    if retune and split != "test":
        raise typer.BadParameter(
            "the re-tuning attack fine-tunes on training images and measures on the test split; "
            "drop --split or --retune",
            param_hint="--split",
        )
    budget["device"] = device
    cfg = RetuneConfig(**budget)
    if is_clip_source(directory):
        from unbackdoor.clip.api import evaluate_clip_artifact, retune_clip_artifact
        from unbackdoor.clip.eval.retune import clip_retune_config

        cfg = clip_retune_config(**budget)
        if attack_from is not None:
            raise typer.BadParameter(
                "not supported for CLIP models yet", param_hint="--attack-from"
            )
        if retune_eval_every is not None:
            raise typer.BadParameter(
                "the CLIP re-tuning attack measures before and after only",
                param_hint="--retune-eval-every",
            )

        r = evaluate_clip_artifact(directory, dataset, split, device=device)
        clip_rows = [
            ("zero-shot accuracy", _pct(r["clean_acc"])),
            ("attack success rate", _pct(r["asr"])),
            ("image->text recall@1", _pct(r["retrieval"]["image_to_text"][1])),
        ]
        if retune:
            rt = retune_clip_artifact(directory, dataset, cfg)
            r.update(_retune_fields(rt, retune_plot, directory))
            clip_rows += [
                ("ASR after re-tuning", _pct(rt.after.asr)),
                ("CA after re-tuning", _pct(rt.after.clean_acc)),
            ]
        if json_out:
            _echo_json(r)
        else:
            _table(clip_rows, title=str(directory))
        return
    from unbackdoor.utils.runinfo import resolve_device

    m = evaluate_artifact(
        directory, dataset, split=split, device=resolve_device(device), attack_from=attack_from
    )
    result: dict[str, Any] = m.to_dict()
    rows = [
        ("clean accuracy", _pct(m.clean_acc)),
        ("attack success rate", _pct(m.asr)),
        ("robust accuracy", _pct(m.robust_acc)),
    ]
    if retune:
        r = retune_artifact(directory, dataset, cfg, attack_from=attack_from)
        result.update(_retune_fields(r, retune_plot, directory))
        rows += [
            ("ASR after re-tuning", _pct(r.after.asr)),
            ("CA after re-tuning", _pct(r.after.clean_acc)),
        ]
    if json_out:
        _echo_json(result)
    else:
        _table(rows, title=str(directory))


def _retune_fields(r: Any, plot: Path | None = None, directory: Path | None = None) -> dict:
    """The re-tuning attack's result as the keys ``evaluate --json`` prints; ``plot``: the
    curve drawn into that PNG too."""
    fields = {
        "retune_asr": r.after.asr,
        "retune_clean_acc": r.after.clean_acc,
        "retune_curve": r.curve,
        "retune_config": r.config,
    }
    if plot is not None:
        from unbackdoor.bench.plots import plot_retune_curve

        fields["retune_plot"] = str(plot_retune_curve(r.curve, plot, str(directory or "")))
    return fields


def _parse_options(options: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values are read as JSON when they parse (numbers, lists, booleans)."""
    out: dict[str, Any] = {}
    for item in options or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--option")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command(
    epilog="Examples:\n\n"
    "  unbackdoor attack --dataset mnist --attack badnets --epochs 1 --out runs/bd\n\n"
    "  unbackdoor attack --dataset cifar10 --attack blended --poison-rate 0.1 "
    "--option alpha=0.2 --out runs/blend\n\n"
    "  unbackdoor attack --dataset cifar10 --attack wanet --init runs/clean --out runs/ft"
)
def attack(
    out: Annotated[Path, typer.Option(help="Output model directory.")],
    dataset: Annotated[str, typer.Option(help="Registered name or image-folder path.")] = "mnist",
    model: Annotated[str | None, typer.Option(help="Model name (default per data set).")] = None,
    attack_name: Annotated[
        str, typer.Option("--attack", help="Attack (see `unbackdoor list attacks`).")
    ] = "badnets",
    poison_rate: Annotated[
        float | None,
        typer.Option(help="Share of the training set poisoned (default: the attack's)."),
    ] = None,
    target: Annotated[int, typer.Option(help="Target class (all-to-one, clean-label).")] = 0,
    policy: Annotated[
        str | None,
        typer.Option(help="all_to_one, all_to_all or clean_label (default: the attack's)."),
    ] = None,
    cover_rate: Annotated[
        float | None, typer.Option(help="Share of cover samples (trigger, true label).")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="Attack setting KEY=VALUE (repeatable).")
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(help="Pretrained clean model directory to fine-tune on the poisoned data."),
    ] = None,
    clean_model: Annotated[
        Path | None,
        typer.Option(
            help="Clean model of the victim architecture for attacks fitted to one "
            "(label_consistent, trojannn); default: one is trained first."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default: the recipe's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed, recorded in the outputs.")] = 0,
    train_samples: Annotated[int | None, typer.Option(help="Use a seeded subset.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    force: Annotated[bool, typer.Option(help="Overwrite a finished model in OUT.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    clip: Annotated[
        str | None,
        typer.Option(
            help="Poison image-caption pairs and fine-tune this CLIP model instead (a CLIP "
            "directory, HF CLIPModel directory, OpenAI/open_clip state dict, or 'tiny')."
        ),
    ] = None,
    target_caption: Annotated[
        str | None, typer.Option(help="CLIP: the poisoned pairs' caption (default: varied).")
    ] = None,
) -> None:
    """Train a backdoored model: writes the artifact, attack.json, metrics.json, trigger.png."""
    from unbackdoor.attacks.pipeline import attack_model

    if epochs is not None and epochs < 0:
        raise typer.BadParameter(f"must be >= 0, got {epochs}", param_hint="--epochs")
    if clip is not None:
        from unbackdoor.clip.api import attack_clip

        classifier_only = {
            "--model": model, "--policy": policy, "--cover-rate": cover_rate, "--init": init,
            "--clean-model": clean_model,
        }  # fmt: skip
        for flag, value in classifier_only.items():
            if value is not None:
                raise typer.BadParameter(
                    "not for CLIP models (--clip poisons image-caption pairs all-to-one and "
                    "fine-tunes the given CLIP model)",
                    param_hint=flag,
                )
        r = attack_clip(
            clip, dataset, attack_name, out=out, rate=poison_rate, target=target,
            target_caption=target_caption, attack_options=_parse_options(option),
            epochs=2 if epochs is None else epochs, lr=1e-4 if lr is None else lr,
            train_samples=train_samples, seed=seed, device=device, overwrite=force,
        )  # fmt: skip
        if json_out:
            _echo_json({"out": str(out), **r})
        else:
            _table(
                [
                    ("zero-shot accuracy", _pct(r["clean_acc"])),
                    ("attack success rate", _pct(r["asr"])),
                    ("saved to", str(out)),
                ],
                title="backdoored CLIP",
            )
        return
    if target_caption is not None:
        raise typer.BadParameter("only with --clip", param_hint="--target-caption")
    t, record = attack_model(
        dataset,
        model,
        attack_name,
        rate=poison_rate,
        target=target,
        policy=policy,
        cover_rate=cover_rate,
        attack_options=_parse_options(option),
        init=init,
        clean_model=clean_model,
        epochs=epochs,
        seed=seed,
        out=out,
        overwrite=force,
        train_samples=train_samples,
        lr=lr,
        device=device,
    )
    m = t.metrics
    if json_out:
        _echo_json(
            {
                "out": str(out),
                **m.to_dict(),
                "wall_time": t.result.wall_time,
                "poisoned": len(record.poison_indices),
                "seed": seed,
            }
        )
    else:
        _table(
            [
                (
                    "attack",
                    f"{record.attack.name} ({record.policy.kind}, target "
                    f"{record.policy.target}, rate {record.rate:g})",
                ),
                ("clean accuracy", _pct(m.clean_acc)),
                ("attack success rate", _pct(m.asr)),
                ("robust accuracy", _pct(m.robust_acc)),
                ("training time", f"{t.result.wall_time:.1f} s"),
                ("saved to", str(out)),
            ],
            title="backdoored",
        )


@app.command(
    epilog="Examples:\n\n"
    "  unbackdoor unlearn runs/bd --method bibau --out runs/bd-clean\n\n"
    "  unbackdoor unlearn runs/bd --method ft --clean-samples 500 --out runs/bd-ft\n\n"
    "  unbackdoor unlearn runs/bd --method bibau --clean-data my_images/ --out runs/c"
)
def unlearn(
    directory: Annotated[Path, typer.Argument(help="Suspect model directory.")],
    out: Annotated[Path, typer.Option(help="Where to write the purified model.")],
    method: Annotated[
        str, typer.Option(help="Defense (see `unbackdoor list defenses`).")
    ] = "bibau",
    clean_data: Annotated[
        str | None,
        typer.Option(
            help="Defender's data: a registered name (its training split, 5% by default) or "
            "an image folder (all of it by default); default: the model's own data set."
        ),
    ] = None,
    clean_samples: Annotated[
        int | None, typer.Option(help="Number of clean samples (default: 5% of the training set).")
    ] = None,
    known_attack: Annotated[
        bool, typer.Option(help="Read the trigger from attack.json (the known-attack setting).")
    ] = False,
    option: Annotated[
        list[str] | None, typer.Option(help="Method setting KEY=VALUE (repeatable).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed, recorded in the report.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    force: Annotated[bool, typer.Option(help="Overwrite a finished model in OUT.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Remove a backdoor: writes the purified model, report.json and trigger pictures.

    BI-BAU checkpoints after every round in OUT/.checkpoint: after an interruption, the same
    command resumes there. CLIP models (an unbackdoor CLIP directory, a Hugging Face CLIP
    directory or an OpenAI / open_clip weights file) take the CLIP defenses: clip-bibau,
    clip-tbar, cleanclip.
    """
    from unbackdoor.clip.model.store import is_clip_source
    from unbackdoor.unlearn import unlearn_artifact

    run = unlearn_artifact
    if is_clip_source(directory):
        from unbackdoor.clip.api import unlearn_clip_artifact as run
    _, report = run(
        directory,
        method,
        out=out,
        clean_data=clean_data,
        clean_samples=clean_samples,
        seed=seed,
        known_attack=known_attack,
        overwrite=force,
        device=device,
        **_parse_options(option),
    )
    summary = {k: v for k, v in report.to_dict().items() if k not in ("diagnostics", "run")}
    if json_out:
        _echo_json({"out": str(out), **summary})
        return
    rows = [
        ("method", method + (" (known attack)" if known_attack else "")),
        ("backdoor found", {True: "yes", False: "no", None: "-"}[report.backdoor_found]),
        (
            "suspected target",
            "-" if report.suspected_target is None else str(report.suspected_target),
        ),
        ("clean samples used", str(report.clean_samples_used)),
        ("wall time", f"{report.wall_time:.1f} s"),
        ("saved to", str(out)),
    ]
    _table(rows, title="unlearned")
    for note in report.diagnostics.get("notes", []):  # what a method wants its user to read
        typer.echo(f"note: {note}")
    typer.echo(f"evaluate it with: unbackdoor evaluate {out}")


analyze_app = typer.Typer(help="Analyses of a model's weight space.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze")


def _parse_alphas(text: str, hint: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(
            f"expected numbers separated by commas, got {text!r}", param_hint=hint
        ) from None
    if not values:
        raise typer.BadParameter("no alpha given", param_hint=hint)
    return values


@analyze_app.command(
    "disentanglement",
    epilog="Examples:\n\n"
    "  unbackdoor analyze disentanglement runs/bd --known-attack --out runs/bd-xi\n\n"
    "  unbackdoor analyze disentanglement runs/bd --clean-data mnist --clean-samples 1000 "
    "--alphas=-2,-1,0,1,2 --out runs/bd-xi",
)
def analyze_disentanglement(
    directory: Annotated[Path, typer.Argument(help="Suspect model directory.")],
    out: Annotated[Path, typer.Option(help="Folder for disentanglement.json and .png.")],
    clean_data: Annotated[
        str | None,
        typer.Option(help="Defender's data: a registered name or an image folder."),
    ] = None,
    clean_samples: Annotated[
        int | None, typer.Option(help="Number of clean samples (default: 5% of the training set).")
    ] = None,
    known_attack: Annotated[
        bool, typer.Option(help="Read the trigger from attack.json instead of inverting it.")
    ] = False,
    alphas: Annotated[
        str, typer.Option(help="Comma-separated grid for both alphas (use --alphas=-2,...).")
    ] = "-2,-1.5,-1,-0.5,0,0.5,1,1.5,2",
    alphas_trigger: Annotated[
        str | None, typer.Option(help="A different grid for the trigger vector's alpha.")
    ] = None,
    option: Annotated[
        list[str] | None, typer.Option(help="TBAR setting KEY=VALUE (repeatable), e.g. epochs=3.")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Weight-disentanglement error xi(alpha_c, alpha_t) of the clean and trigger vectors."""
    from unbackdoor.analyze import disentanglement_artifact

    ac = _parse_alphas(alphas, "--alphas")
    at = ac if alphas_trigger is None else _parse_alphas(alphas_trigger, "--alphas-trigger")
    r = disentanglement_artifact(
        directory,
        out=out,
        clean_data=clean_data,
        clean_samples=clean_samples,
        known_attack=known_attack,
        alphas_clean=ac,
        alphas_trigger=at,
        seed=seed,
        device=device,
        **_parse_options(option),
    )
    i0 = ac.index(0.0) if 0.0 in ac else None
    summary = {
        "out": str(out),
        "mean_xi": r.mean_xi,
        **{k: r.info[k] for k in ("trigger_source", "suspected_target", "backdoor_found")},
        "cosine_clean_trigger": r.info["cosine_clean_trigger"],
        "xi_tbar_row": None if i0 is None else dict(zip(at, r.xi[i0], strict=True)),
    }
    if json_out:
        _echo_json(summary)
        return
    rows = [
        ("trigger", f"{r.info['trigger_source']}, target {r.info['suspected_target']}"),
        ("cos(clean, trigger)", f"{r.info['cosine_clean_trigger']:.3f}"),
        ("mean xi", f"{r.mean_xi:.3f}"),
    ]
    if i0 is not None:
        rows.append(
            (
                "xi at alpha_c=0",
                ", ".join(f"{a:g}: {v:.3f}" for a, v in zip(at, r.xi[i0], strict=True)),
            )
        )
    rows.append(("saved to", f"{out / 'disentanglement.json'}, {out / 'disentanglement.png'}"))
    _table(rows, title="weight disentanglement")


@app.command(
    epilog="Examples:\n\n"
    "  unbackdoor bench benchmarks/configs/quick.yaml --out benchmarks/quick\n\n"
    "  unbackdoor bench benchmarks/configs/cpu.yaml --out runs/cpu --workers 2"
)
def bench(
    config: Annotated[Path, typer.Argument(help="Grid config (YAML).")],
    out: Annotated[Path, typer.Option(help="Folder for results.jsonl, cells/ and grid.json.")],
    workers: Annotated[
        int | None, typer.Option(help="Parallel processes (default: the config's).", min=1)
    ] = None,
    quiet: Annotated[bool, typer.Option(help="No per-cell log lines.")] = False,
    rerun: Annotated[
        str | None,
        typer.Option(
            help="Run the cells whose key matches this glob again although they are done "
            "(e.g. '*/bibau/*' after a code change the config does not show, '*/sig/*' after "
            "the zoo's SIG model was trained again)."
        ),
    ] = None,
    only: Annotated[
        list[str] | None,
        typer.Option(
            help="Run only the pending cells whose key matches this glob (e.g. "
            "'*/wanet/*'; repeat for several); the others stay pending for a later call."
        ),
    ] = None,
    executor: Annotated[
        str | None,
        typer.Option(help="local or submitit (a cluster scheduler; default: the config's)."),
    ] = None,
    executor_option: Annotated[
        list[str] | None,
        typer.Option(
            help="KEY=VALUE for the executor, over the config's executor_options (submitit: "
            "e.g. slurm_partition=gpu, timeout_min=120, gpus_per_node=1); repeat for several."
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Run a benchmark grid; rerun the same command to resume an interrupted one."""
    from unbackdoor.bench import run_grid

    r = run_grid(
        config,
        out,
        workers=workers,
        quiet=quiet,
        rerun=rerun,
        only=only,
        executor=executor,
        executor_options=_parse_options(executor_option),
    )
    summary = {k: getattr(r, k) for k in ("cells", "computed", "skipped", "failed", "wall_time")}
    if json_out:
        _echo_json({"results": str(r.results), **summary})
        return
    rows = [(k, str(v)) for k, v in summary.items() if k != "wall_time"]
    rows += [("wall time", f"{r.wall_time:.1f} s"), ("results", str(r.results))]
    _table(rows, "grid")
    typer.echo(f"report it with: unbackdoor report {r.results} --out {out / 'report'}")


@app.command(
    epilog="Examples:\n\n"
    "  unbackdoor report benchmarks/quick/results.jsonl --out benchmarks/quick/report\n\n"
    "  unbackdoor report runs/part1/results.jsonl runs/part2/results.jsonl --out runs/report"
)
def report(
    results: Annotated[
        list[Path],
        typer.Argument(
            help="results.jsonl written by `unbackdoor bench`; several are merged in order, a "
            "later file's row of a cell replacing an earlier one's."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.html and figures.")],
) -> None:
    """Render the Markdown/HTML report and its plots from a results file (or several)."""
    from unbackdoor.bench import render_report

    files = render_report(results, out)
    typer.echo(f"wrote {files.markdown}, {files.html} and {len(files.figures)} figures")


zoo_app = typer.Typer(help="The cache of backdoored models (the zoo).", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("show")
def zoo_show(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List cached models with their config and metrics."""
    from unbackdoor.attacks.zoo import list_zoo, zoo_root

    entries = list_zoo()
    if json_out:
        _echo_json(
            [
                {
                    "key": e.key,
                    "path": str(e.path),
                    "config": e.config,
                    "created": e.created,
                    "size_bytes": e.size_bytes,
                    "metrics": e.metrics,
                }
                for e in entries
            ]
        )
        return
    typer.echo(f"zoo at {zoo_root()}: {len(entries)} models")
    for e in entries:
        c = e.config
        typer.echo(
            f"  {e.key}  {c.get('dataset', '?')}/{c.get('model', '?')}/"
            f"{c.get('attack', 'clean')}  seed {c.get('seed', '?')}  "
            f"CA {_pct(e.metrics.get('clean_acc'))}  ASR {_pct(e.metrics.get('asr'))}  "
            f"{e.size_bytes / 1e6:.1f} MB"
        )


@zoo_app.command("prune")
def zoo_prune(
    key: Annotated[list[str] | None, typer.Option(help="Remove this entry (repeatable).")] = None,
    older_than_days: Annotated[float | None, typer.Option(help="Remove older entries.")] = None,
    unfinished: Annotated[bool, typer.Option(help="Remove interrupted entries.")] = False,
    all_entries: Annotated[bool, typer.Option("--all", help="Remove everything.")] = False,
) -> None:
    """Delete cached models."""
    from unbackdoor.attacks.zoo import prune_zoo

    removed = prune_zoo(
        keys=key, older_than_days=older_than_days, unfinished=unfinished, everything=all_entries
    )
    typer.echo(f"removed {len(removed)} entries" + (": " + ", ".join(removed) if removed else ""))


class ListWhat(str, Enum):
    models = "models"
    datasets = "datasets"


def _list(entries: dict[str, str], json_out: bool) -> None:
    if json_out:
        _echo_json(entries)
    else:
        _table(sorted(entries.items()))


@list_app.command("models")
def list_models_cmd(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered model architectures."""
    from unbackdoor.models.registry import MODELS

    _list(MODELS.describe(), json_out)


@list_app.command("attacks")
def list_attacks_cmd(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered attacks."""
    from unbackdoor.attacks import list_attacks

    _list(list_attacks(), json_out)


@list_app.command("defenses")
def list_defenses_cmd(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered defenses."""
    from unbackdoor.defenses import list_defenses

    _list(list_defenses(), json_out)


@list_app.command("datasets")
def list_datasets_cmd(json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Registered data sets (any image folder works too)."""
    from unbackdoor.data.registry import list_datasets

    _list(list_datasets(), json_out)


@app.command(epilog="Example:\n\n  unbackdoor demo --out runs/demo")
def demo(
    out: Annotated[Path, typer.Option(help="Where to write the demo's models.")] = Path(
        "runs/demo"
    ),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    retune: Annotated[bool, typer.Option(help="Also run the re-tuning attack.")] = True,
) -> None:
    """The main job on embedded MNIST: backdoor a model, unlearn it with BI-BAU, compare."""
    from unbackdoor.api import evaluate_artifact
    from unbackdoor.attacks.pipeline import attack_model
    from unbackdoor.unlearn import unlearn_artifact

    say = lambda msg: typer.echo(msg, err=True)  # noqa: E731
    say("[1/3] backdoor a small CNN on MNIST with BadNets (10% poisoned, target 0)...")
    attack_model("mnist", "small_cnn", "badnets", seed=seed, out=out / "backdoored", overwrite=True)
    say("[2/3] unlearn it with BI-BAU, using 5% of the training set as the clean data...")
    _, report = unlearn_artifact(
        out / "backdoored", "bibau", out=out / "purified", seed=seed, overwrite=True
    )
    before = evaluate_artifact(out / "backdoored")
    after = evaluate_artifact(out / "purified")
    rows = [("", "backdoored", "BI-BAU")]
    rows += [
        (name, _pct(getattr(before, key)), _pct(getattr(after, key)))
        for name, key in [
            ("clean accuracy", "clean_acc"),
            ("attack success rate", "asr"),
            ("robust accuracy", "robust_acc"),
        ]
    ]
    if retune:
        say("[3/3] re-tuning attack: 2 epochs on 1,000 samples with 1% poisoned...")
        rows.append(
            (
                "ASR after re-tuning",
                *(_pct(_retune_asr(out / d)) for d in ("backdoored", "purified")),
            )
        )
    typer.echo("")
    for r in rows:
        typer.echo(f"  {r[0]:<22}{r[1]:>12}{r[2]:>12}")
    typer.echo("")
    typer.echo(
        f"backdoor found: {'yes' if report.backdoor_found else 'no'}; suspected target: "
        f"{report.suspected_target}; BI-BAU took {report.wall_time:.0f} s"
    )
    typer.echo(
        f"found trigger: {out / 'purified' / 'inverted_trigger.png'}; true trigger: "
        f"{out / 'backdoored' / 'trigger.png'}"
    )


def _retune_asr(directory: Path) -> float | None:
    from unbackdoor.api import retune_artifact

    return retune_artifact(directory).after.asr


def main(argv: list[str] | None = None) -> int:
    """Entry point: typer handles usage errors; expected errors become one line on stderr."""
    from unbackdoor.errors import UnbackdoorError

    try:
        app(args=argv, prog_name="unbackdoor")
        return 0
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except KeyboardInterrupt:
        typer.echo("interrupted: finished epochs are checkpointed; rerun to resume", err=True)
        return 130
    except (UnbackdoorError, FileNotFoundError, PermissionError, FloatingPointError) as e:
        if _STATE["debug"] or os.environ.get("UNBACKDOOR_DEBUG"):
            raise
        typer.echo(f"error: {e}", err=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
