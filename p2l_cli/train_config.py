"""Training configurations: recipes (YAML), command-line overrides, validation.

A recipe is a flat YAML mapping of :class:`TrainConfig` fields; flags given on the command
line override it. Names used by the reference implementation's configs (``learning_rate``,
``gradient_accumulation_steps``, ``pretrain_model_name``, ...) are accepted as aliases, and
its keys that have no meaning here (paths, project names, DeepSpeed files) are ignored with
a warning, so its YAML files work as recipes too.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from p2l_cli.errors import UserError
from p2l_cli.model.heads import HEAD_ACTIVATIONS, HEAD_INITS, HEAD_TYPES, head_for_family
from p2l_cli.stats.families import canonical_family, has_eta

SCHEDULERS = ("constant", "linear", "cosine")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
POOLINGS = ("cls", "first", "mean")
HEAD_SOLVERS = ("adamw", "ridge-cv")
AUTO_LOSS = "auto"
DEFAULT_RECIPE = "minilm-cpu"
# Settings that only the exact ridge-cv head uses (the cross-validation chooses them).
RIDGE_ONLY = {
    "neighbours": "neighbourhood leaderboards",
    "smoothing": "graph-smoothed embeddings",
    "model_covariance": "model-covariance refits",
}

ALIASES = {
    "learning_rate": "lr",
    "num_train_epochs": "epochs",
    "gradient_accumulation_steps": "grad_accum",
    "pretrain_model_name": "backbone",
    "lr_schedule": "scheduler",
    "lr_scheduler_type": "scheduler",
    "loss_type": "loss",
    "head_type": "head",
    "adam_epsilon": "adam_eps",
    "weighted_loss": "weighted",
    "train_head_only": "freeze_backbone",
    "warmup_steps": "warmup",
    "warmup_ratio": "warmup",
    "max_steps": "max_steps",
    "per_device_train_batch_size": "batch_size",
    "pad_token_if_none": "pad_token",
    "cls_token_if_none": "cls_token",
    "init_type": "head_init",
    "linear_head_downsize_factor": "head_downsize",
    "eta_downsize": "head_eta_downsize",
}
IGNORED = {
    "proj_name", "output_dir", "train_data_path", "val_data_path", "model_type",
    "deepspeed_config_path", "load_train_data_from_disk", "load_val_data_from_disk",
    "repo_id", "p2l_version", "encoder",
}  # fmt: skip
# Reference keys that are accepted but change nothing here, and why (one warning each).
NO_EFFECT = {
    "reweight_scale": "a constant factor on the vote weights cancels out: the loss is the "
    "weighted mean over the votes",
    "head_config": "the reference reads it but passes it to no head; set the head with "
    "head_rank, head_hidden, head_activation and head_init",
}

# Keys that do not change what is learnt: they may differ when a run is resumed.
OPERATIONAL = {"eval_batch_size", "log_every", "save_every", "num_workers"}


@dataclass
class TrainConfig:
    """Every setting of a training run; saved in the model folder's training_config.json."""

    backbone: str = "minilm"
    loss: str = AUTO_LOSS  # auto: bt-tie when the training votes hold ties, else bt
    head: str | None = None
    head_rank: int | None = None
    head_downsize: int | None = None  # reference: rank = models // factor, first layer biased
    head_rank_bias: bool = False
    head_eta_downsize: bool = False
    head_hidden: int | None = None
    head_activation: str = "gelu"
    head_init: str = "zeros"
    marginal_init: bool = True
    pooling: str | None = None
    chat_template: str | None = None
    max_length: int = 1024
    epochs: int = 1
    max_steps: int | None = None
    lr: float = 1e-5
    head_lr: float | None = None
    batch_size: int = 8
    eval_batch_size: int | None = None
    grad_accum: int = 1
    warmup: float = 0.0
    scheduler: str = "constant"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_eps: float = 1e-8
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    seed: int = 42
    eval_every: int = 0
    log_every: int = 10
    save_every: int | None = None
    patience: int | None = None
    chrono: bool = False
    group_by_length: bool = False
    gradient_checkpointing: bool = False
    freeze_backbone: bool = False
    head_solver: str = "adamw"  # ridge-cv: exact linear head, penalty by cross-validation
    cv_folds: int = 5
    neighbours: bool = False  # ridge-cv: refine by the votes of similar prompts, if CV says so
    smoothing: bool = False  # ridge-cv: smooth the embedding over similar prompts, if CV says so
    model_covariance: bool = False  # ridge-cv: refit the chosen head under a prior across models
    # ridge-cv: above twice this many training votes, compare the candidate heads on a
    # subsample of whole prompts holding about this many, and fit only the winner on all
    selection_votes: int | None = None
    normalize: bool = False
    prompt_features: bool = False
    weighted: bool = False
    style_control: bool = False  # style coefficients from the training votes enter the loss
    precision: str = "auto"
    pad_token: str | None = None  # added as the pad token when the backbone has none
    cls_token: str | None = None  # added as the cls token when a decoder backbone has none

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def family(self) -> str:
        if self.loss == AUTO_LOSS:
            raise ValueError("loss 'auto' is resolved from the training votes first")
        return canonical_family(self.loss)

    @property
    def head_type(self) -> str:
        if self.head:
            return self.head
        return head_for_family(self.loss) if self.loss != AUTO_LOSS else "bt"

    def resolved_rank(self, num_models: int) -> int | None:
        """``head_rank``, or ``num_models // head_downsize`` (the reference's factor)."""
        if self.head_rank or not self.head_downsize:
            return self.head_rank
        return max(1, num_models // self.head_downsize)

    def warmup_steps(self, total_steps: int) -> int:
        """``warmup`` below 1 is a fraction of the run, from 1 on a number of steps."""
        if self.warmup < 1:
            return math.ceil(self.warmup * total_steps)
        return int(self.warmup)


FIELDS = {f.name: f for f in fields(TrainConfig)}
# Settings that a recipe sets and `p2l train` has no flag for, and why.
RECIPE_ONLY = {
    "chat_template": "a Jinja template, too long to pass on a command line",
    "adam_betas": "a pair of numbers; rarely changed",
    "pad_token": "the reference configs' pad_token_if_none: a special token's text, per backbone",
    "cls_token": "the reference configs' cls_token_if_none: a special token's text, per backbone",
}


# -------------------------------------------------------------------------------- recipes


def recipe_dirs() -> list[Path]:
    """Where ``--recipe NAME`` looks: ./recipes, then the recipes shipped with p2l."""
    package = Path(__file__).resolve().parent
    return [Path.cwd() / "recipes", package / "recipes", package.parent / "recipes"]


def find_recipe(name: str) -> Path:
    path = Path(name)
    if path.is_file():
        return path
    stem = path.name.removesuffix(".yaml").removesuffix(".yml")
    for folder in recipe_dirs():
        for candidate in (folder / f"{stem}.yaml", folder / f"{stem}.yml"):
            if candidate.is_file():
                return candidate
    known = sorted({p.stem for d in recipe_dirs() if d.is_dir() for p in d.glob("*.y*ml")})
    raise UserError(
        f"--recipe {name}: no such file or recipe name"
        + (f" (known recipes: {', '.join(known)})" if known else "")
    )


def read_recipe(name: str) -> tuple[dict[str, Any], list[str]]:
    """The recipe's settings under canonical names, and warnings about ignored keys."""
    path = find_recipe(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        raise UserError(f"{path}: {where}not valid YAML") from None
    if raw is None:
        return {}, []
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of settings")
    settings: dict[str, Any] = {}
    warnings = []
    for key, value in raw.items():
        name_ = ALIASES.get(str(key), str(key)).replace("-", "_")
        if str(key) in IGNORED:
            warnings.append(f"{path}: ignoring {key!r} (not a p2l training setting)")
            continue
        if str(key) in NO_EFFECT:
            warnings.append(f"{path}: ignoring {key!r} ({NO_EFFECT[str(key)]})")
            continue
        if name_ not in FIELDS:
            raise UserError(f"{path}: unknown setting {key!r} (known: {', '.join(FIELDS)})")
        settings[name_] = coerce(name_, value, f"{path}: {key}")
    return settings, warnings


# ------------------------------------------------------------------------------- coercion


def _field_types(name: str) -> tuple[type, ...]:
    hint = typing.get_type_hints(TrainConfig)[name]
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(typing.get_origin(a) or a for a in args)


def coerce(name: str, value: Any, where: str) -> Any:
    """``value`` as the type of field ``name``; ``where`` names the source in errors."""
    kinds = _field_types(name)
    if value is None:
        if type(None) in kinds:
            return None
        raise UserError(f"{where}: must not be empty")
    for kind in kinds:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):
            try:
                return float(value)  # YAML reads 1e-5 (no dot) as a string
            except ValueError:
                pass
        if kind is str and isinstance(value, str):
            return value
        if kind is list and isinstance(value, (list, tuple)):
            return [float(v) for v in value]
    expected = " or ".join(k.__name__ for k in kinds if k is not type(None))
    raise UserError(f"{where}: expected {expected}, got {value!r}")


# ----------------------------------------------------------------------------- resolution


def resolve_config(
    recipe: str | None, overrides: dict[str, Any], use_default_recipe: bool = True
) -> tuple[TrainConfig, set[str], list[str]]:
    """The configuration from a recipe plus command-line overrides (``None`` = not given).

    Without a recipe and without ``--backbone`` the CPU recipe ``minilm-cpu`` is used
    (unless ``use_default_recipe`` is false). Returns the config, the names set explicitly
    (by the recipe or a flag), and warnings.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    warnings: list[str] = []
    settings: dict[str, Any] = {}
    if recipe is None and "backbone" not in given and use_default_recipe:
        recipe = DEFAULT_RECIPE
    if recipe is not None:
        settings, warnings = read_recipe(recipe)
    for key, value in given.items():
        if key not in FIELDS:
            raise UserError(f"unknown training setting {key!r}")
        settings[key] = coerce(key, value, f"--{key.replace('_', '-')}")
    solver = settings.get("head_solver", "ridge-cv")
    for key, what in RIDGE_ONLY.items():
        if settings.get(key) and key not in given and solver != "ridge-cv":
            # the recipe's setting belongs to its ridge-cv head, which a flag replaced
            settings[key] = False
            warnings.append(f"{what} (from the recipe) need --head-solver ridge-cv; off with "
                            f"--head-solver {solver}")
    config = TrainConfig(**settings)
    validate(config)
    return config, set(settings), warnings


def _check(condition: bool, option: str, message: str) -> None:
    if not condition:
        raise UserError(f"--{option.replace('_', '-')}: {message}")


def resolve_loss(loss: str, tie_codes) -> str:
    """``auto``: ``bt-tie`` (a tie is half a win, the Arena's convention) when any training
    vote is a tie, else ``bt``; any other name as given."""
    if loss != AUTO_LOSS:
        return loss
    return "bt-tie" if any(int(c) != 0 for c in tie_codes) else "bt"


def validate(config: TrainConfig) -> None:
    if config.loss != AUTO_LOSS:
        try:
            config.loss = canonical_family(config.loss)
        except ValueError as exc:
            if "tie-only" in str(exc):
                raise UserError(f"--loss {exc}") from None
            raise UserError(
                f"--loss {config.loss}: expected auto, bt, bt-tie, rk, grk (or bag), "
                "rk-reparam or ba"
            ) from None
    _check(
        config.head_solver in HEAD_SOLVERS,
        "head_solver",
        f"expected one of {', '.join(HEAD_SOLVERS)}",
    )
    if config.head_solver == "ridge-cv":
        _check(
            config.freeze_backbone,
            "head_solver",
            "ridge-cv fits a head on frozen features; add --freeze-backbone (or use adamw)",
        )
        _check(
            not (config.head_rank or config.head_downsize or config.head_hidden),
            "head_solver",
            "ridge-cv fits a linear head; drop --head-rank / --head-hidden (or use adamw)",
        )
    _check(config.cv_folds >= 2, "cv_folds", "must be at least 2")
    _check(config.selection_votes is None or config.selection_votes >= 1, "selection_votes",
           "must be at least 1")
    for key, what in RIDGE_ONLY.items():
        _check(not getattr(config, key) or config.head_solver == "ridge-cv", key,
               f"{what} need --head-solver ridge-cv")
    _check(config.head in (None, *HEAD_TYPES), "head",
           f"{config.head!r}: expected one of {', '.join(HEAD_TYPES)}")
    tie_model = config.loss != AUTO_LOSS and has_eta(config.loss)
    needed = head_for_family(config.loss) if config.loss != AUTO_LOSS else "bt"
    _check(
        not (config.head == "bt" and tie_model),
        "head",
        f"a bt head has no tie output; loss {config.loss} needs --head {needed}",
    )
    _check(
        not (config.head in ("rk", "ba") and config.head != needed),
        "head",
        f"a {config.head} head's outputs are not those of loss {config.loss}"
        + (f" (it needs --head {needed})" if tie_model else ""),
    )
    _check(config.head_rank is None or config.head_rank >= 1, "head_rank", "must be at least 1")
    _check(config.head_downsize is None or config.head_downsize >= 1, "head_downsize",
           "must be at least 1 (the rank is the number of models divided by it)")
    _check(not (config.head_rank and config.head_downsize), "head_downsize",
           "give --head-rank or --head-downsize, not both")
    has_rank = bool(config.head_rank or config.head_downsize)
    _check(not config.head_rank_bias or has_rank, "head_rank_bias",
           "a first-layer bias needs a low-rank head (--head-rank or --head-downsize)")
    _check(not config.head_eta_downsize or (has_rank and needed == "rk"), "head_eta_downsize",
           "eta read from the low-rank layer needs an rk head (loss rk, grk or rk-reparam) "
           "with --head-rank or --head-downsize")
    _check(
        config.head_hidden is None or config.head_hidden >= 1, "head_hidden", "must be at least 1"
    )
    _check(
        not ((config.head_rank or config.head_downsize) and config.head_hidden),
        "head_hidden",
        "a head has either a rank (--head-rank) or a hidden layer (--head-hidden), not both",
    )
    _check(
        config.head_activation in HEAD_ACTIVATIONS,
        "head_activation",
        f"expected one of {', '.join(HEAD_ACTIVATIONS)}",
    )
    _check(config.head_init in HEAD_INITS, "head_init", f"expected one of {', '.join(HEAD_INITS)}")
    _check(config.pooling in (None, *POOLINGS), "pooling", f"expected one of {', '.join(POOLINGS)}")
    _check(config.scheduler in SCHEDULERS, "scheduler", f"expected one of {', '.join(SCHEDULERS)}")
    _check(config.precision in PRECISIONS, "precision", f"expected one of {', '.join(PRECISIONS)}")
    _check(config.max_length >= 2, "max_length", "must be at least 2")
    _check(config.epochs >= 1, "epochs", "must be at least 1")
    _check(config.max_steps is None or config.max_steps >= 1, "max_steps", "must be at least 1")
    _check(config.lr > 0, "lr", "must be positive")
    _check(config.head_lr is None or config.head_lr > 0, "head_lr", "must be positive")
    _check(config.batch_size >= 1, "batch_size", "must be at least 1")
    _check(
        config.eval_batch_size is None or config.eval_batch_size >= 1,
        "eval_batch_size",
        "must be at least 1",
    )
    _check(config.grad_accum >= 1, "grad_accum", "must be at least 1")
    _check(config.warmup >= 0, "warmup", "must be 0 or more (a fraction below 1, else steps)")
    _check(config.weight_decay >= 0, "weight_decay", "must be 0 or more")
    _check(config.max_grad_norm >= 0, "max_grad_norm", "must be 0 (no clipping) or more")
    _check(config.adam_eps > 0, "adam_eps", "must be positive")
    _check(len(config.adam_betas) == 2, "adam_betas", "expected two numbers")
    _check(config.eval_every >= 0, "eval_every", "must be 0 (each epoch) or more")
    _check(config.log_every >= 1, "log_every", "must be at least 1")
    _check(config.save_every is None or config.save_every >= 1, "save_every", "must be at least 1")
    _check(config.patience is None or config.patience >= 1, "patience", "must be at least 1")
    for name in ("pad_token", "cls_token"):
        value = getattr(config, name)
        _check(value is None or bool(value.strip()), name, "must not be blank")


def merge_for_resume(saved: dict[str, Any], config: TrainConfig, explicit: set[str]) -> TrainConfig:
    """The saved configuration of a run being resumed. Settings given again must agree with
    it, except operational ones (logging, saving, evaluation batch size), which may change."""
    base = TrainConfig(**{k: v for k, v in saved.items() if k in FIELDS})
    conflicts = []
    for key in sorted(explicit):
        new, old = getattr(config, key), getattr(base, key)
        if key in OPERATIONAL:
            setattr(base, key, new)
        elif new != old:
            conflicts.append(f"{key} {new!r} (checkpoint: {old!r})")
    if conflicts:
        raise UserError(
            "--resume: the checkpoint was trained with other settings: "
            + "; ".join(conflicts)
            + " (drop these options, or start over with --overwrite)"
        )
    return base
