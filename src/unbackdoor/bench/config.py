"""The benchmark grid's configuration: a YAML file checked up front.

A grid is datasets x models x attacks x defenses x clean-data budgets x seeds::

    name: quick
    datasets: [mnist]
    models: [small_cnn]          # omitted or null: each data set's default model
    attacks: [badnets, {name: blended, rate: 0.1, options: {alpha: 0.2}}]
    defenses: [none, ft, {name: bibau, options: {rounds: 4}}]
    budgets: [1000, 0.05]        # clean samples: a count, or a fraction of the training set
    seeds: [0, 1, 2]
    retune: {samples: 1000, poison_rate: 0.01, epochs: 2, lr: 5.0e-4, eval_every: 4}
    workers: 2                   # parallel processes (local executor)
    executor: local              # or submitit (a cluster scheduler), options in executor_options

Unknown keys anywhere are errors that name them (with a close match when there is one). Attack and
defense *names* are checked against their registries only when the grid starts
(:func:`check_registries`), so a config can be parsed before every method is installed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unbackdoor.errors import ConfigError, RegistryError
from unbackdoor.eval.retune import RetuneConfig
from unbackdoor.utils.config import check, check_choice, from_dict

EXECUTORS = ("local", "submitit")
NONE = "none"


@dataclass
class AttackSpec:
    """One attack of the grid; ``none`` means the never-backdoored model."""

    name: str
    rate: float | None = None  # None: the grid's poison_rate (clean-label: capped, see cells)
    target: int | None = None  # None: the grid's target
    policy: str | None = None  # None: the attack's own label policy
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None  # the name in tables and keys (default: name)

    @property
    def id(self) -> str:
        return self.label or self.name


@dataclass
class DefenseSpec:
    """One defense of the grid; ``none`` is the backdoored model left as it is (the ceiling)."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    known_attack: bool = False  # give the method the true trigger (the known-attack setting)
    label: str | None = None

    @property
    def id(self) -> str:
        return self.label or (self.name + ("+known" if self.known_attack else ""))


@dataclass
class TrainSpec:
    """How the zoo trains the backdoored and clean models (default: the model's recipe)."""

    epochs: int | None = None
    train_samples: int | None = None  # train on a seeded subset of the training split
    options: dict[str, Any] = field(default_factory=dict)  # TrainConfig overrides (lr, ...)


@dataclass
class BenchConfig:
    """The whole grid. See the module docstring for the YAML form."""

    datasets: list[str]
    attacks: list[AttackSpec]
    defenses: list[DefenseSpec]
    name: str = "bench"
    description: str = ""
    models: list[str | None] = field(default_factory=lambda: [None])
    budgets: list[int | float] = field(default_factory=lambda: [0.05])
    seeds: list[int] = field(default_factory=lambda: [0])
    poison_rate: float = 0.1
    target: int = 0
    train: TrainSpec = field(default_factory=TrainSpec)
    retune: RetuneConfig = field(default_factory=RetuneConfig)
    floor: bool = True  # re-tune a never-backdoored model with each attack's trigger
    test_samples: int | None = None  # evaluate on a fixed seeded subset of the test split
    val_fraction: float = 0.2  # the defender's held-out share (unlearn's default)
    device: str = "auto"
    zoo: str | None = None  # zoo directory (default: $UNBACKDOOR_ZOO or ~/.cache/unbackdoor/zoo)
    save_models: bool = False  # keep each purified model in its cell folder
    workers: int = 1
    threads: int | None = None  # torch threads per worker (default: cores / workers)
    executor: str = "local"
    executor_options: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> BenchConfig:
        """Check every value that does not need a registry; raises :class:`ConfigError`."""
        o = "bench config"
        check(bool(self.datasets), o, "datasets", self.datasets, "a non-empty list")
        check(bool(self.attacks), o, "attacks", self.attacks, "a non-empty list")
        check(bool(self.defenses), o, "defenses", self.defenses, "a non-empty list")
        check(bool(self.models), o, "models", self.models, "a non-empty list (or omitted)")
        check(bool(self.seeds), o, "seeds", self.seeds, "a non-empty list")
        check(bool(self.budgets), o, "budgets", self.budgets, "a non-empty list")
        for s in self.seeds:
            check(_is_int(s), o, "seeds", s, "integers")
        for b in self.budgets:
            ok = (_is_int(b) and b >= 10) or (isinstance(b, float) and 0 < b < 1)
            check(ok, o, "budgets", b, "a sample count >= 10 or a fraction in (0, 1)")
        check(0 < self.poison_rate < 1, o, "poison_rate", self.poison_rate, "in (0, 1)")
        check(_is_int(self.target) and self.target >= 0, o, "target", self.target, ">= 0")
        check(0 < self.val_fraction < 1, o, "val_fraction", self.val_fraction, "in (0, 1)")
        check(_is_int(self.workers) and self.workers >= 1, o, "workers", self.workers, ">= 1")
        check(
            self.threads is None or (_is_int(self.threads) and self.threads >= 1),
            o,
            "threads",
            self.threads,
            "null or >= 1",
        )
        check(
            self.test_samples is None or (_is_int(self.test_samples) and self.test_samples >= 10),
            o,
            "test_samples",
            self.test_samples,
            "null or >= 10",
        )
        check_choice(o, "executor", self.executor, EXECUTORS)
        for a in self.attacks:
            check(a.rate is None or 0 < a.rate < 1, f"attack {a.id!r}", "rate", a.rate, "in (0, 1)")
        t = self.train
        check(
            t.epochs is None or (_is_int(t.epochs) and t.epochs >= 1),
            "train",
            "epochs",
            t.epochs,
            ">= 1",
        )
        check(
            t.train_samples is None or (_is_int(t.train_samples) and t.train_samples >= 10),
            "train",
            "train_samples",
            t.train_samples,
            ">= 10",
        )
        self.retune.validate()
        _unique("attacks", [a.id for a in self.attacks])
        _unique("defenses", [d.id for d in self.defenses])
        _unique("budgets", [budget_id(b) for b in self.budgets])
        _unique("seeds", self.seeds)
        _unique("datasets", self.datasets)
        _unique("models", self.models)
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unique(key: str, values: list[Any]) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise ConfigError(
                f"bench config: {key} lists {v!r} twice (give one a different 'label')"
            )
        seen.add(v)


def budget_id(budget: int | float) -> str:
    """``n500`` for a sample count, ``f0.05`` for a fraction of the training set."""
    return f"n{budget}" if _is_int(budget) else f"f{budget:g}"


def _listify(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int, float, Mapping)):
        return [value]
    if isinstance(value, list):
        return value
    raise ConfigError(f"bench config: {key} must be a list, got {type(value).__name__}")


def _spec(cls: type, value: Any, key: str) -> Any:
    """A spec from a name (``badnets``) or a mapping (``{name: badnets, rate: 0.05}``)."""
    if isinstance(value, str):
        return cls(name=value)
    if isinstance(value, Mapping):
        if "name" not in value:
            raise ConfigError(f"an entry of {key} has no 'name': {dict(value)}")
        try:
            return from_dict(cls, value)
        except ConfigError as e:
            raise ConfigError(f"{key} entry {value.get('name')!r}: {e}") from None
    raise ConfigError(f"{key} entries must be names or mappings, got {value!r}")


_KeysOnly = dataclasses.make_dataclass(
    "_KeysOnly", [(f.name, Any, None) for f in dataclasses.fields(BenchConfig)]
)


def parse_config(values: Mapping[str, Any], source: str = "bench config") -> BenchConfig:
    """Build and validate a :class:`BenchConfig` from a mapping (the parsed YAML)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: expected a mapping of keys, got {type(values).__name__}")
    d = dict(values)
    try:
        from_dict(_KeysOnly, {k: None for k in d})  # unknown keys first, with a close match
    except ConfigError as e:
        raise ConfigError(f"{source}: {str(e).replace('_KeysOnly: ', '')}") from None
    for key in ("datasets", "attacks", "defenses"):
        if key not in d:
            raise ConfigError(f"{source}: missing required key {key!r}")
    try:
        d["attacks"] = [_spec(AttackSpec, a, "attacks") for a in _listify(d["attacks"], "attacks")]
        d["defenses"] = [
            _spec(DefenseSpec, x, "defenses") for x in _listify(d["defenses"], "defenses")
        ]
        for key in ("datasets", "models", "budgets", "seeds"):
            if key in d:
                d[key] = _listify(d[key], key) or ([None] if key == "models" else [])
        d["models"] = [None if m in (None, "default") else m for m in d.get("models", [None])]
        if isinstance(d.get("retune"), Mapping) and "seed" in d["retune"]:
            raise ConfigError("retune: no 'seed' here: each cell re-tunes with its own seed")
        if isinstance(d.get("retune"), Mapping) and "device" in d["retune"]:
            raise ConfigError("retune: no 'device' here: the grid's 'device' is used")
        for key, cls in (("train", TrainSpec), ("retune", RetuneConfig)):
            if key in d:
                d[key] = _section(cls, d[key], key)
        cfg = from_dict(BenchConfig, d)
        return cfg.validate()
    except ConfigError as e:
        msg = re.sub(r"^(bench config|BenchConfig): ", "", str(e))
        raise ConfigError(f"{source}: {msg}") from None
    except (TypeError, AttributeError) as e:  # a wrong shape, e.g. a list for a mapping
        raise ConfigError(f"{source}: {e}") from None


def _section(cls: type, value: Any, key: str) -> Any:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    try:
        return from_dict(cls, value or {})
    except ConfigError as e:
        raise ConfigError(f"{key}: {re.sub(r'^[A-Za-z]+: ', '', str(e))}") from None


def load_config(config: str | Path | Mapping[str, Any] | BenchConfig) -> BenchConfig:
    """A validated config from a YAML path, a mapping or an existing :class:`BenchConfig`."""
    if isinstance(config, BenchConfig):
        return config.validate()
    if isinstance(config, Mapping):
        return parse_config(config)
    import yaml

    path = Path(config)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    return parse_config(values or {}, source=str(path))


def check_registries(cfg: BenchConfig) -> None:
    """Check attack and defense names and options against the registries (at grid start)."""
    from unbackdoor.attacks.policy import POLICIES
    from unbackdoor.attacks.registry import create_attack
    from unbackdoor.defenses.registry import create_defense

    for a in cfg.attacks:
        if a.name == NONE:
            continue
        try:  # an unknown name is a RegistryError that lists the known attacks
            create_attack(a.name, **a.options)
        except (ConfigError, RegistryError) as e:
            raise ConfigError(f"bench config: attack {a.id!r}: {e}") from None
        if a.policy is not None:
            check_choice(f"attack {a.id!r}", "policy", a.policy, POLICIES)
    for d in cfg.defenses:
        if d.name == NONE:
            continue
        try:
            create_defense(d.name, **d.options)
        except (ConfigError, RegistryError) as e:
            raise ConfigError(f"bench config: defense {d.id!r}: {e}") from None


def stable_hash(obj: Any, n: int = 8) -> str:
    """A short hash of a JSON-able object (canonical JSON), used in cell keys."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:n]
