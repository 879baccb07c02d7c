"""``p2l train``: fine-tune a P2L model with an explicit Accelerate loop.

One process or many (``accelerate launch`` / ``torchrun``; DeepSpeed and FSDP through
Accelerate's own config). The loop, step by step:

- setup (``Trainer.setup``, one ``_setup_*`` step each): read the data folder, build the
  model (backbone + head), fit the marginal leaderboard on the training votes (the baseline,
  and the head's starting bias), tokenise, with ``--freeze-backbone`` compute the pooled
  features once (cached on disk), build the optimizer, and with ``--resume`` load the
  checkpoint;
- train: each optimizer step takes one global batch (see ``train_data``), split into
  micro-batches over processes and accumulation steps; the loss of a micro-batch is its
  share of the global batch's mean vote NLL, so the step's gradient does not depend on how
  the batch is split; AdamW with clipping and a constant/linear/cosine schedule with warmup;
- validate every ``eval_every`` steps and at the end (NLL, accuracy, Brier, next to the
  marginal leaderboard's); the model folder always holds the best weights so far;
- checkpoint ``checkpoints/last`` (model, optimizer, scheduler, RNG, data position) at each
  validation and at the end, and when Ctrl-C or SIGTERM arrives, so ``--resume`` continues
  exactly where the run stopped.

Nothing here prints: messages and progress go to ``RunOptions.reporter`` (see
``p2l_cli.reporting``), which the command renders on stderr.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, gather_object, set_seed

from p2l_cli.environment import versions
from p2l_cli.errors import UserError
from p2l_cli.io import write_json
from p2l_cli.model import build_p2l, collate, save_p2l
from p2l_cli.model.checkpoint import state_dict_for_saving
from p2l_cli.model.neighbours import FAMILIES as NEIGHBOUR_FAMILIES
from p2l_cli.model.neighbours import MAX_VOTES as NEIGHBOUR_MAX_VOTES
from p2l_cli.model.neighbours import MAX_WORK as NEIGHBOUR_MAX_WORK
from p2l_cli.model.neighbours import cross_validate as cross_validate_neighbours
from p2l_cli.model.smoothing import LEXICAL_WEIGHT, Smoothing, candidates_for, choose_anchors
from p2l_cli.reporting import INFO, NOTICE, SILENT, WARNING, Reporter
from p2l_cli.stats.aggregate import aggregate
from p2l_cli.stats.families import labels_nll, with_style_offset
from p2l_cli.stats.headfit import HeadFitReport, fit_linear_head, prompt_groups, prompt_subsample
from p2l_cli.stats.marginal import MarginalFit, arena_scale, fit_marginal
from p2l_cli.stats.metrics import vote_metrics
from p2l_cli.train_config import (
    AUTO_LOSS,
    TrainConfig,
    merge_for_resume,
    resolve_config,
    resolve_loss,
)
from p2l_cli.train_data import (
    DataDir,
    Layout,
    epoch_order,
    fingerprint,
    load_data_dir,
    step_weight,
    tokenize,
)
from p2l_cli.train_features import (
    cache_key,
    default_cache_dir,
    load_cached,
    pooled_features,
    save_cached,
)

CHECKPOINTS = "checkpoints"
LAST = "last"
STATE_FILE = "trainer_state.json"
BEST_HEAD = "best_head.safetensors"
METRICS_LOG = "metrics.jsonl"
LOCK_FILE = ".p2l-train.lock"
# What p2l writes into a model folder; --overwrite removes these before a new run.
OUTPUTS = (
    CHECKPOINTS, METRICS_LOG, "metrics.json", "leaderboard.json", "model.safetensors",
    "model.safetensors.index.json", "training_config.json", "model_list.json", "config.json",
)  # fmt: skip
FEATURES_ON_DEVICE_BYTES = 2 << 30


@dataclass
class RunOptions:
    """How to run, as opposed to what to learn."""

    resume: bool = False
    overwrite: bool = False
    stop_after: int | None = None  # pause (resumable) once this many steps are done
    cache_dir: Path | None = None
    reporter: Reporter = SILENT  # where messages and progress go (the main process's)


@dataclass
class TrainerState:
    """The loop's position and bookkeeping; saved with every checkpoint."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    examples: int = 0
    best_nll: float | None = None
    best_step: int | None = None
    best_val: dict | None = None
    last_eval_step: int | None = None
    last_save_step: int | None = None
    evals_since_best: int = 0
    stopped_early: bool = False
    processes: int = 1
    data_fingerprint: str = ""
    config: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> TrainerState:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class TrainResult:
    out_dir: Path
    status: str  # "finished", "paused" (--stop-after) or "interrupted" (a signal)
    state: TrainerState
    metrics: dict | None = None
    signal: str | None = None


class TrainingInterrupted(Exception):
    """Ctrl-C or SIGTERM stopped training after a checkpoint was written."""

    def __init__(self, result: TrainResult):
        super().__init__(f"stopped by {result.signal} at step {result.state.step}")
        self.result = result


# ================================================================================ entry


def train_p2l(
    data_dir: str | Path,
    out_dir: str | Path,
    recipe: str | None = None,
    overrides: dict[str, Any] | None = None,
    options: RunOptions | None = None,
) -> TrainResult:
    """Train (or resume) a P2L model on ``data_dir`` and write the model folder ``out_dir``.

    ``overrides`` are settings given on the command line (``None`` = not given); they win
    over the recipe. Raises :class:`TrainingInterrupted` after checkpointing on a signal.
    """
    options = options or RunOptions()
    out = Path(out_dir)
    config, explicit, warnings = resolve_config(
        recipe, overrides or {}, use_default_recipe=not options.resume
    )
    saved = read_checkpoint_state(out) if options.resume else None
    if saved is not None:
        config = merge_for_resume(saved["config"], config, explicit)
    accelerator = make_accelerator(config)
    reporter = options.reporter if accelerator.is_main_process else SILENT
    with output_lock(out, accelerator):
        prepare_output_dir(out, options, accelerator)
        for message in warnings + ineffective_settings(config, overrides or {}):
            reporter.event(WARNING, message)
        threads = torch.get_num_threads()
        try:
            trainer = Trainer(config, Path(data_dir), out, accelerator, options, reporter)
            trainer.setup()
            try:
                return trainer.train()
            finally:
                trainer.cleanup()
        finally:
            torch.set_num_threads(threads)


@contextmanager
def output_lock(out: Path, accelerator: Accelerator) -> Iterator[None]:
    """One training run per model folder: a second run into a folder that another is
    writing stops at once (exit 2) instead of mixing their files."""
    if not accelerator.is_main_process:
        yield
        return
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a folder")
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    lock = out / LOCK_FILE
    with open(lock, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"-o {out}: another `p2l train` is writing this folder; wait for it to end "
                "or train into another folder"
            ) from None
        try:
            yield
        except BaseException:
            if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:
                lock.unlink()  # a run that failed before writing anything leaves no folder
                out.rmdir()
            raise
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# Relative weights of the prompt descriptors against the embedding in ridge-cv (chosen by CV).
DESCRIPTOR_WEIGHTS = (3.0, 10.0)
# Settings of the step-wise optimiser, which an exact ridge-cv fit does not use.
STEP_SETTINGS = (
    "epochs", "max_steps", "lr", "head_lr", "batch_size", "grad_accum", "warmup", "scheduler",
    "weight_decay", "max_grad_norm", "adam_eps", "adam_betas", "eval_every", "patience",
    "head_init", "chrono", "group_by_length", "save_every",
)  # fmt: skip


def available_cores() -> int:
    """The cores this process may run on (a container or ``taskset`` may allow fewer than
    the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def fit_side_by_side(fit: Callable, jobs: dict) -> dict:
    """``{key: fit(*args)}`` for ``jobs = {key: args}``, one thread per available core (the
    fits are independent and each runs on one core, so the result is the same)."""
    workers = max(1, min(len(jobs), available_cores()))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {key: pool.submit(fit, *args) for key, args in jobs.items()}
        return {key: future.result() for key, future in futures.items()}


def head_fit_threads(rows: int, width: int) -> int:
    """How many threads the cross-validated head fits may share for their folds' fits
    (:func:`p2l_cli.stats.headfit.fit_linear_head`'s ``pool``): one per core, as many as
    half the machine's memory allows, each running fold fit holding up to three float64
    copies of its ``rows x width`` features (its rows, and those rows laid out twice by
    model, or once by pair of models)."""
    cores = available_cores()
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf: let the cores decide
        return cores
    return max(1, min(cores, memory // 2 // max(1, 3 * 8 * rows * width)))


def ineffective_settings(config: TrainConfig, overrides: dict[str, Any]) -> list[str]:
    """Warnings for flags given on the command line that change nothing in this run."""
    given = [k for k, v in overrides.items() if v is not None]

    def warning(unused: list[str], why: str) -> list[str]:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        return [f"{flags}: no effect in this run ({why})"] if unused else []

    if config.head_solver == "ridge-cv":
        why = "the head is fitted exactly (--head-solver ridge-cv); use --head-solver adamw"
        return warning([k for k in given if k in STEP_SETTINGS], why)
    warnings = []
    if "selection_votes" in given:
        why = "it chooses among ridge-cv heads; this run trains with --head-solver adamw"
        warnings += warning(["selection_votes"], why)
    if config.freeze_backbone and "lr" in given and config.head_lr is not None:
        why = "--lr is the backbone's learning rate and the backbone is frozen; see --head-lr"
        warnings += warning(["lr"], why)
    return warnings


def make_accelerator(config: TrainConfig) -> Accelerator:
    precision = config.precision
    if precision == "auto":
        cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        precision = "bf16" if cuda_bf16 else "fp32"
    mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[precision]
    # Without GPUs, several processes (torchrun) need Accelerate's multi-CPU mode.
    multi_cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    try:
        accelerator = Accelerator(
            mixed_precision=mixed, gradient_accumulation_steps=config.grad_accum, cpu=multi_cpu
        )
    except ValueError as exc:
        raise UserError(f"--precision {config.precision}: {exc}") from None
    if accelerator.gradient_accumulation_steps != config.grad_accum:
        raise UserError(
            f"--grad-accum {config.grad_accum}: the Accelerate/DeepSpeed config asks for "
            f"{accelerator.gradient_accumulation_steps} accumulation steps; leave "
            "gradient_accumulation_steps out of that config (or make them agree)"
        )
    return accelerator


def checkpoint_dir(out: Path) -> Path | None:
    """The resumable checkpoint of a model folder (``last``, or ``last.old`` when a save
    was cut short between its two renames)."""
    for name in (LAST, LAST + ".old"):
        candidate = out / CHECKPOINTS / name
        if (candidate / STATE_FILE).is_file():
            return candidate
    return None


def read_checkpoint_state(out: Path) -> dict:
    found = checkpoint_dir(out)
    if found is None:
        raise UserError(
            f"{out / CHECKPOINTS / LAST}: no checkpoint to resume (train without --resume first)"
        )
    try:
        return json.loads((found / STATE_FILE).read_text())
    except json.JSONDecodeError:
        raise UserError(f"{found / STATE_FILE}: damaged checkpoint state") from None


def prepare_output_dir(out: Path, options: RunOptions, accelerator: Accelerator) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out}: exists and is not a folder")
    if not options.resume and out.is_dir() and any(p.name != LOCK_FILE for p in out.iterdir()):
        if not options.overwrite:
            hint = " or --resume to continue its checkpoint" if checkpoint_dir(out) else ""
            raise UserError(f"-o {out}: folder is not empty; pass --overwrite to replace it{hint}")
        if accelerator.is_main_process:
            for name in OUTPUTS:
                target = out / name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
    accelerator.wait_for_everyone()


# ============================================================================== helpers


def lr_factor(step: int, warmup: int, total: int, kind: str) -> float:
    """The learning-rate multiplier at (0-based) optimizer step ``step``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress_ = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return max(0.0, 1.0 - progress_)
    return 0.5 * (1.0 + math.cos(math.pi * progress_))


def param_groups(module: torch.nn.Module, config: TrainConfig, head_only: bool) -> list[dict]:
    """AdamW groups: no weight decay on biases and norms; the head may have its own lr."""
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        is_head = head_only or name.startswith("head.")
        decays = param.ndim >= 2
        groups.setdefault((is_head, decays), []).append(param)
    out = []
    for (is_head, decays), params in sorted(groups.items()):
        lr = (config.head_lr or config.lr) if is_head else config.lr
        out.append(
            {"params": params, "lr": lr, "weight_decay": config.weight_decay if decays else 0.0}
        )
    return out


def make_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    kwargs = {"lr": config.lr, "betas": tuple(config.adam_betas), "eps": config.adam_eps}
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.AdamW(groups, **kwargs)


def rng_snapshot() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


class StopSignals:
    """Ctrl-C and SIGTERM ask the loop to stop at the next safe point (it then writes a
    checkpoint); a second signal stops at once."""

    def __init__(self, reporter: Reporter = SILENT):
        self.received: str | None = None
        self.reporter = reporter

    def _handle(self, signum, frame) -> None:
        if self.received is not None:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name
        self.reporter.event(NOTICE, f"{self.received}: stopping after a checkpoint…")

    @contextmanager
    def installed(self) -> Iterator[None]:
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._handle)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def missing_ties_warning(family: str, tie_codes: np.ndarray) -> str | None:
    """A tie family fit on votes without the ties it models has no finite optimum: eta
    runs off (and, for grk, the coefficients' level with it). Say so before training."""
    if family in ("grk", "ba") and not np.any(tie_codes == 2):
        return (
            f"loss {family}: the training votes hold no 'tie (bothbad)', so the coefficients' level "
            "against the reference 0 is not identified; consider --loss rk or bt"
        )
    if family in ("rk", "rk-reparam") and not np.any(tie_codes != 0):
        return f"loss {family}: the training votes hold no ties, so eta is not identified; consider --loss bt"
    return None


def leaderboard_rows(theta: np.ndarray, models: list[str]) -> list[dict]:
    order = np.argsort(-theta, kind="stable")
    scores = arena_scale(theta)
    return [
        {"rank": rank, "model": models[i], "theta": float(theta[i]), "score": float(scores[i])}
        for rank, i in enumerate(order, start=1)
    ]


def _fmt(metrics: dict | None, key: str) -> str:
    return "-" if not metrics or metrics.get(key) is None else f"{metrics[key]:.4f}"


# ============================================================================== trainer


class Trainer:
    """One training run: ``setup()`` (data, model, marginal, tokens, features, optimizer,
    resume), then ``train()``, then ``cleanup()``."""

    def __init__(
        self,
        config: TrainConfig,
        data_dir: Path,
        out_dir: Path,
        accelerator: Accelerator,
        options: RunOptions,
        reporter: Reporter | None = None,  # default: options.reporter
    ):
        self.config = config
        self.data_dir = data_dir
        self.out = out_dir
        self.accelerator = accelerator
        self.options = options
        self.reporter = options.reporter if reporter is None else reporter
        self.device = accelerator.device
        self.signals = StopSignals(self.reporter)
        self.best_head: dict[str, torch.Tensor] | None = None
        self.window = _Window()
        self.head_fit: dict | None = None
        self.features: dict[str, torch.Tensor] | None = None
        self.words: dict[str, torch.Tensor] = {}  # see _prompt_words
        self.style: dict | None = None  # the style fit, with --style-control
        self.offsets: dict[str, np.ndarray] | None = None  # each vote's style term

    def setup(self) -> None:
        self._setup_data()
        set_seed(self.config.seed)
        self._setup_model()
        self._setup_marginal()
        self._setup_tokens()
        self._setup_features()
        self._setup_optimizer()
        self._setup_resume()

    # ----------------------------------------------------------------------- setup steps

    def _setup_data(self) -> None:
        """Read the data folder; resolve ``--loss auto`` from its training votes."""
        config = self.config
        self.data: DataDir = load_data_dir(self.data_dir, config.weighted, config.style_control)
        tie_codes = self.data.train.labels[:, 2]
        if config.loss == AUTO_LOSS:
            config.loss = resolve_loss(config.loss, tie_codes)
            holds = "hold" if config.loss == "bt-tie" else "hold no"
            self.reporter.event(INFO, f"loss: {config.loss} (auto: the training votes {holds} ties)")
        self.family = config.family
        if (message := missing_ties_warning(self.family, tie_codes)) is not None:
            self.reporter.event(WARNING, message)

    def _setup_model(self) -> None:
        config = self.config
        self.model, self.tokenizer = build_p2l(
            config.backbone,
            self.data.models,
            head_type=config.head_type,
            loss_type=config.loss,
            pooling=config.pooling,
            max_length=config.max_length,
            head_rank=config.resolved_rank(len(self.data.models)),
            chat_template=config.chat_template,
            head_hidden=config.head_hidden,
            head_activation=config.head_activation,
            normalize=config.normalize,
            prompt_features=config.prompt_features,
            pad_token=config.pad_token,
            cls_token=config.cls_token,
            head_rank_bias=config.head_rank_bias or bool(config.head_downsize),
            head_eta_downsize=config.head_eta_downsize,
        )
        if self.model.info.max_length < config.max_length:
            self.reporter.event(
                INFO,
                f"max length: {self.model.info.max_length} tokens ({config.backbone} has no "
                "position embeddings past that)",
            )

    def _setup_marginal(self) -> None:
        """Fit the marginal leaderboard on the training votes: the baseline, and (with
        ``--marginal-init``) the head's starting bias."""
        config, train = self.config, self.data.train
        if config.style_control:
            self.marginal = self._fit_style()
        else:
            self.marginal = fit_marginal(
                train.labels[:, 0], train.labels[:, 1], train.labels[:, 2],
                len(self.data.models), self.family, weights=train.weights,
            )  # fmt: skip
        self.baseline = self._metrics(self.marginal.theta, self.marginal.eta)
        if config.marginal_init:
            bias = torch.as_tensor(self.marginal.theta, dtype=torch.float32)
            self.model.head.initialise(config.head_init, bias=bias, eta=self.marginal.eta)
        else:
            self.model.head.initialise(config.head_init)

    def _fit_style(self) -> MarginalFit:
        """Style control: the contextual marginal model on the training votes. Its style
        coefficients stay fixed from here on: each vote's style term (an offset split between
        its two models) enters every loss, so the head learns strength with style held
        fixed. Returns the style-controlled marginal leaderboard."""
        from p2l_cli.stats.style import TRAIN_STYLE_REG, fit_style, style_terms

        train, m = self.data.train, len(self.data.models)
        fit = fit_style(train.labels[:, 0], train.labels[:, 1], train.labels[:, 2], train.sign,
                        train.style, m, self.family, weights=train.weights,
                        reg=TRAIN_STYLE_REG, ci="none")
        self.style = {"features": train.style_names, "coefficients": fit.beta.tolist(),
                      "mean": fit.feature_mean.tolist(), "sd": fit.feature_std.tolist(),
                      "reg": TRAIN_STYLE_REG}
        self.offsets = {}
        for split in ("train", "val"):
            votes = getattr(self.data, split)
            if len(votes) == 0:
                self.offsets[split] = np.zeros(0)
                continue
            self.offsets[split] = style_terms(votes.style, votes.sign, fit.feature_mean,
                                              fit.feature_std, fit.beta)
        points = ", ".join(f"{name} {b * 400 / math.log(10):+.1f}"
                           for name, b in zip(train.style_names, fit.beta))
        self.reporter.event(INFO, f"style control: rating points per sd of the answers' "
                                  f"relative difference: {points}")
        return MarginalFit(theta=fit.theta, eta=fit.eta, family=self.family, nll=fit.nll,
                           n_votes=fit.n_votes)

    def _offset(self, split: str, idx: np.ndarray | None = None) -> torch.Tensor | None:
        if self.offsets is None:
            return None
        values = self.offsets[split] if idx is None else self.offsets[split][idx]
        return torch.as_tensor(values, dtype=torch.float64, device=self.device)

    def _setup_tokens(self) -> None:
        """Tokenise both splits; lay out the batches and count the steps."""
        config, data, info = self.config, self.data, self.model.info
        self.token_ids = {
            split: tokenize(self.tokenizer, getattr(data, split), info, label=split,
                            reporter=self.reporter)
            for split in ("train", "val")
        }  # fmt: skip
        self.fingerprints = {
            split: fingerprint(self.token_ids[split], votes.labels, votes.weights)
            for split, votes in (("train", data.train), ("val", data.val))
        }
        self.layout = Layout(config.batch_size, self.accelerator.num_processes, config.grad_accum)
        self.steps_per_epoch = self.layout.steps_per_epoch(len(data.train))
        if self.steps_per_epoch == 0:
            raise UserError(
                f"--batch-size {config.batch_size}: a global batch of {self.layout.global_batch} "
                f"votes (batch size x processes x --grad-accum) is larger than the "
                f"{len(data.train)} training votes"
            )
        self.total_steps = config.max_steps or config.epochs * self.steps_per_epoch
        self.lengths = np.fromiter(  # what the backbone reads: rows may be whole prompts
            (min(len(r), info.max_length) for r in self.token_ids["train"]), np.int64,
            len(self.token_ids["train"]),
        )

    def _setup_features(self) -> None:
        """With ``--freeze-backbone``: the pooled features, and only the head trains.
        Otherwise the whole model trains."""
        if self.config.freeze_backbone:
            self.features = self._frozen_features(
                [self.fingerprints["train"], self.fingerprints["val"]]
            )
            self.trainable: torch.nn.Module = self.model.head
            if self.device.type == "cpu":
                # the head's matrices are tiny: thread start-up would cost more than it saves
                torch.set_num_threads(1)
        else:
            self.trainable = self.model
            self._prepare_backbone_for_training()

    def _setup_optimizer(self) -> None:
        config = self.config
        optimizer = make_optimizer(
            param_groups(self.trainable, config, head_only=config.freeze_backbone), config
        )
        self.wrapped, self.optimizer = self.accelerator.prepare(self.trainable, optimizer)
        warmup = config.warmup_steps(self.total_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, warmup, self.total_steps, config.scheduler)
        )
        self.accelerator.register_for_checkpointing(self.scheduler)

    def _setup_resume(self) -> None:
        """A fresh loop state, or with ``--resume`` the checkpoint's."""
        self.state = TrainerState(
            processes=self.accelerator.num_processes,
            data_fingerprint=self.fingerprints["train"],
            config=self.config.to_dict(),
        )
        if self.options.resume:
            self._load_checkpoint()

    # ---------------------------------------------------------------------- setup helpers

    def _prepare_backbone_for_training(self) -> None:
        network = self.model.model
        # A BERT-style pooler is not part of P2L's pooling: keep it out of the gradient.
        for name, param in network.named_parameters():
            if name.startswith("pooler."):
                param.requires_grad_(False)
        if self.config.gradient_checkpointing:
            if getattr(network, "supports_gradient_checkpointing", False):
                kwargs = {"use_reentrant": False}
                if hasattr(network, "activation_checkpointing_enable"):  # transformers >= 5
                    network.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
                else:
                    network.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
                if hasattr(network.config, "use_cache"):
                    network.config.use_cache = False
            else:
                self.reporter.event(
                    WARNING,
                    f"{self.config.backbone}: no gradient checkpointing support; training without",
                )
        self.model.train()

    def _frozen_features(self, prints: list[str]) -> dict[str, torch.Tensor]:
        """Pooled features of train and val prompts, from the cache or computed now (by the
        main process; the others read its cache file)."""
        precision = self.accelerator.mixed_precision
        key = cache_key(self.model, prints, precision, self.tokenizer.all_special_ids)
        folder = Path(self.options.cache_dir) if self.options.cache_dir else default_cache_dir()
        path = folder / f"{key}.safetensors"
        with self.accelerator.main_process_first():
            tensors = load_cached(path, ["train", "val"])
            if tensors is None:
                tensors = self._compute_features()
                if self.accelerator.is_main_process:
                    try:
                        save_cached(path, tensors)
                    except OSError as exc:
                        self.reporter.event(
                            WARNING, f"{path}: cannot cache the features ({exc.strerror})"
                        )
            else:
                self.reporter.event(INFO, f"features: read from the cache {path}")
        self.model.model.to("cpu")
        total_bytes = sum(t.numel() * 4 for t in tensors.values())
        if total_bytes <= FEATURES_ON_DEVICE_BYTES:
            tensors = {k: v.to(self.device) for k, v in tensors.items()}
        return tensors

    def _compute_features(self) -> dict[str, torch.Tensor]:
        self.model.model.to(self.device)
        batch = self.config.eval_batch_size or max(16, 2 * self.config.batch_size)
        pad = self.tokenizer.pad_token_id
        out = {}
        for split in ("train", "val"):
            ids = self.token_ids[split]
            out[split] = pooled_features(
                self.model, ids, pad, self.device, batch, self.accelerator.autocast, split,
                reporter=self.reporter,
            ) if ids else torch.zeros((0, self.model.pooled_size))
        return out

    # ----------------------------------------------------------------------- forward/loss

    def _forward(self, split: str, idx: np.ndarray, module: torch.nn.Module):
        if self.features is not None:
            x = self.features[split][torch.from_numpy(idx).to(self.features[split].device)]
            words = self._words(split)
            if words is not None:
                words = words[torch.from_numpy(idx)].to(self.device)
            coefs, eta = module(self.model.head_input(x.to(self.device), words))
            coefs = self.model.refine(x, coefs)
        else:
            ids = self.token_ids[split]
            input_ids, mask = collate([ids[i] for i in idx], self.tokenizer.pad_token_id, self.device)
            output = module(input_ids, mask)
            coefs, eta = output.coefs, output.eta
        return coefs.float(), None if eta is None else eta.float()

    def _words(self, split: str) -> torch.Tensor | None:
        """The mean input token embedding of each row's prompt, where the model's smoothing
        searches with it (computed once per split)."""
        return self._prompt_words(split) if self.model.reads_words else None

    def _prompt_words(self, split: str) -> torch.Tensor:
        if split not in self.words:
            ids, pad, rows = self.token_ids[split], self.tokenizer.pad_token_id, []
            table = self.model.model.get_input_embeddings().weight
            for start in range(0, len(ids), 256):
                input_ids, mask = collate(ids[start : start + 256], pad, table.device)
                rows.append(self.model.text_embedding(input_ids, mask).cpu())
            self.words[split] = torch.cat(rows) if rows else torch.zeros((0, table.shape[1]))
        return self.words[split]

    def _votes(self, split: str, idx: np.ndarray):
        votes = getattr(self.data, split)
        labels = torch.from_numpy(votes.labels[idx]).to(self.device)
        weights = None
        if votes.weights is not None:
            weights = torch.from_numpy(votes.weights[idx]).to(self.device)
        return labels, weights

    def _metrics(self, coefs, eta) -> dict | None:
        val = self.data.val
        if len(val) == 0:
            return None
        if self.offsets is not None:
            labels = torch.as_tensor(val.labels)
            coefs = torch.as_tensor(np.asarray(coefs), dtype=torch.float64)
            coefs = with_style_offset(coefs.expand(len(val), -1).cpu(), labels,
                                      self._offset("val").cpu())
        return vote_metrics(coefs, val.labels, eta, self.family, val.weights)

    # --------------------------------------------------------------------------- the loop

    def train(self) -> TrainResult:
        if self.config.head_solver == "ridge-cv":
            return self._run_ridge()
        state = self.state
        self._announce()
        self._trim_log()
        progress = self.reporter.progress("training", self.total_steps, completed=state.step)
        with self.signals.installed(), progress as bar:
            if state.step == 0 and state.last_eval_step is None:
                self._evaluate()
            while state.step < self.total_steps and not state.stopped_early:
                order = self._epoch_order(state.epoch)
                while state.step_in_epoch < self.steps_per_epoch:
                    if not self._train_step(order):
                        return self._interrupted()
                    bar.update(state.step, status=self.window.status())
                    self._after_step(end_of_epoch=state.step_in_epoch == self.steps_per_epoch)
                    if state.step >= self.total_steps or state.stopped_early:
                        break
                    if self._should_stop():
                        return self._interrupted()
                    if self.options.stop_after and state.step >= self.options.stop_after:
                        return self._pause()
                if state.step_in_epoch >= self.steps_per_epoch:
                    state.epoch += 1
                    state.step_in_epoch = 0
        return self._finish()

    def _run_ridge(self) -> TrainResult:
        """The exact cross-validated linear head on the frozen features (no steps): the
        validation votes only report, they choose nothing."""
        self._announce()
        started = time.perf_counter()
        train = self.data.train
        groups = prompt_groups(train.prompts)
        self.reporter.event(
            INFO,
            f"fitting a linear head: {self.config.cv_folds}-fold cross-validation of the "
            "penalty over the training votes (folds split by prompt)",
        )
        features = self.features["train"].cpu().numpy()
        hidden = self.model.config.hidden_size
        # the few prompt descriptors may be penalised less than the many embedding dimensions:
        # their weight is chosen by the same cross-validation
        weights = DESCRIPTOR_WEIGHTS if features.shape[1] > hidden else (1.0,)

        steps = len(self.model.features.steps) if self.model.features is not None else 0
        subsample, compared_on = self._selection_subsample(groups)
        threads = head_fit_threads(*features.shape)
        # the fits side by side share one thread per core for their folds' fits
        with ThreadPoolExecutor(threads) if threads > 1 else nullcontext() as pool:

            def fit(key: tuple, x: np.ndarray, rows: np.ndarray | None = None,
                    directions: HeadFitReport | None = None, near: float | None = None):  # fmt: skip
                """The candidate ``key`` = (smoothing, descriptor weight, steps read) on the
                training votes ``rows`` (all: None); with ``directions`` (its first fit),
                under the model-covariance prior; ``near``: where its penalty should land."""
                torch.set_num_threads(1)  # one core per fold fit: the fits run side by side
                started = time.perf_counter()
                smoothing, descriptor_weight, steps_read = key
                scale = np.ones(x.shape[1])
                scale[hidden:] = descriptor_weight
                pick = slice(None) if rows is None else rows
                head, report = fit_linear_head(
                    x[pick], train.labels[pick], self.family, bias=self.marginal.theta,
                    eta=self.marginal.eta,
                    weights=None if train.weights is None else train.weights[pick],
                    groups=groups[pick], folds=self.config.cv_folds, seed=self.config.seed,
                    feature_weights=scale,
                    offset=None if self.offsets is None else self.offsets["train"][pick],
                    pool=pool, directions=directions, near=near,
                )  # fmt: skip
                name = _candidate_name(smoothing, steps_read, steps) + (
                    f", descriptor weight {descriptor_weight:g}" if len(weights) > 1 else ""
                ) + (", model-covariance prior" if directions is not None else "") + (
                    "" if subsample is None else
                    " (the subsample)" if rows is not None else f" (all {len(train):,} votes)"
                )  # fmt: skip
                self.reporter.event(INFO, f"  candidate {name}: {_cv_summary(report)} "
                                          f"({time.perf_counter() - started:.0f} s)")  # fmt: skip
                return head, report

            raw_candidates = [(None, w, True) for w in weights]
            fits = fit_side_by_side(fit, {key: (key, features, subsample) for key in raw_candidates})
            weight = min(raw_candidates, key=lambda key: fits[key][1].best_cv_nll)[1]
            # at that weight: the embedding smoothed, the length steps read or left out (their
            # columns zeroed, so the head puts no weight on them)
            descriptors = {True: features[:, hidden:]}  # steps read -> the descriptor columns
            if steps:  # a copy of the few descriptor columns only, not of the embedding
                descriptors[False] = features[:, hidden:].copy()
                descriptors[False][:, -steps:] = 0.0
            smoothers: dict[tuple[int, int], Smoothing] = {}
            jobs = {}
            if self.config.smoothing:
                words = None if self.model.features is None else self._prompt_words("train")
                for smoother, smoothed in self._smoothing_candidates(features[:, :hidden], groups,
                                                                     words):  # fmt: skip
                    key = (smoother.k, smoother.steps)
                    smoothers[key] = smoother
                    for on, rest in descriptors.items():
                        jobs[(key, weight, on)] = np.concatenate([smoothed, rest], 1)
            elif steps:
                raw = np.concatenate([features[:, :hidden], descriptors[False]], 1)
                jobs[(None, weight, False)] = raw
            fits.update(fit_side_by_side(fit, {key: (key, x, subsample) for key, x in jobs.items()}))
            best = min(fits, key=lambda key: fits[key][1].best_cv_nll)
            head, report = fits[best]
            inputs = {**{key: features for key in raw_candidates}, **jobs}
            if subsample is not None:  # the winner on every vote, its penalty near the
                # subsample's scaled to these votes (a penalty on the mean NLL)
                near = None if report.fell_back else report.penalty * len(subsample) / len(train)
                head, report = fit(best, inputs[best], near=near)
            first_report = report
            if self.config.model_covariance and not first_report.fell_back:
                refit_head, refit_report = fit(best, inputs[best], directions=first_report,
                                               near=first_report.penalty)  # fmt: skip
                # kept even where its held-out NLL is a little higher: on development worlds
                # where it was, the refit was still the closer to the truth (docs/training.md)
                if not refit_report.fell_back:
                    head, report = refit_head, refit_report
        smoothing, _, steps_read = best
        if smoothing is not None:
            chosen = smoothers[smoothing]
            module = self.model.attach_smoothing(*smoothing, anchors=len(chosen.anchors),
                                                 lexical=chosen.lexical)  # fmt: skip
            module.load_state_dict(chosen.state_dict())
        layer = self.model.head.output_layer
        with torch.no_grad():
            layer.weight.copy_(torch.as_tensor(head.weight, dtype=layer.weight.dtype))
            layer.bias.copy_(torch.as_tensor(head.bias, dtype=layer.bias.dtype))
            if head.eta_weight is not None and self.model.head.eta_head is not None:
                eta_layer = self.model.head.eta_head
                eta_layer.weight.copy_(torch.as_tensor(head.eta_weight[None, :]))
                eta_layer.bias.fill_(head.eta_bias)
            if self.model.head.gamma_head is not None:  # ba: gamma is absorbed in the fit
                self.model.head.gamma_head.weight.zero_()
                self.model.head.gamma_head.bias.zero_()
        self.head_fit = report.to_dict()
        if compared_on is not None:
            self.head_fit["candidates_compared_on"] = compared_on
        if len(weights) > 1:
            self.head_fit["descriptor_weight"] = weight
            self.head_fit["cv_nll_by_descriptor_weight"] = {
                f"{w:g}": fits[(None, w, True)][1].best_cv_nll for w in weights
            }
        if self.config.smoothing:
            self.head_fit["smoothing"] = None if smoothing is None else dict(
                zip(("k", "steps"), smoothing), lexical=smoothers[smoothing].lexical
            )
        if steps and not report.fell_back:
            self.head_fit["length_steps"] = steps_read
        if self.config.model_covariance and not first_report.fell_back:
            # both fits' held-out NLLs, and whether the prior's refit replaced the first
            self.head_fit["model_covariance"] = {
                "cv_nll_first_fit": first_report.best_cv_nll,
                "cv_nll_refit": None if refit_report.fell_back else refit_report.best_cv_nll,
                "used": report is not first_report,
            }
        self.head_fit["cv_nll_by_candidate"] = {
            _candidate_name(key, on, steps): fit.best_cv_nll
            for (key, w, on), (_, fit) in fits.items() if w == weight
        }
        if report.fell_back:
            self.reporter.event(
                INFO,
                f"cross-validation: no clear gain over the marginal leaderboard "
                f"({report.gain:+.4f} ± {report.gain_se:.4f} nats per vote): the model is the "
                "marginal leaderboard",
            )
        else:
            self.reporter.event(
                INFO,
                f"cross-validation: penalty {report.penalty:.3g}"
                + (f", descriptor weight {weight:g}" if len(weights) > 1 else "")
                + ("" if smoothing is None else
                   f", embedding smoothed over {smoothing[0]} neighbours x {smoothing[1]} hops"
                   + (" (searched with the prompts' words too)"
                      if smoothers[smoothing].lexical else ""))
                + ("" if not steps else
                   ", length steps " + ("read" if steps_read else "left out"))
                + ", held-out NLL "
                f"{report.cv_nll[report.penalty]:.4f} vs marginal {report.cv_nll_marginal:.4f} "
                f"({report.gain:+.4f} ± {report.gain_se:.4f} per vote)",
            )
        self._fit_neighbours(report, groups)
        self.state.step = self.total_steps = 1
        self.head_fit["seconds"] = round(time.perf_counter() - started, 2)
        self._log({"type": "head_fit", **self.head_fit})
        self._evaluate()
        if self.best_head is None:  # no validation votes: keep the fitted head
            self.best_head = {
                k: v.detach().cpu().clone() for k, v in self.model.head.state_dict().items()
            }
        return self._finish()

    def _selection_subsample(self, groups: np.ndarray) -> tuple[np.ndarray | None, dict | None]:
        """The training rows on which the ridge candidates are compared, whole prompts
        holding about ``selection_votes`` votes once there are more than twice as many
        votes, and their count of votes and prompts (None, None: compared on every vote)."""
        wanted, votes = self.config.selection_votes, len(groups)
        if wanted is None or votes <= 2 * wanted:
            return None, None
        rows = prompt_subsample(groups, wanted, self.config.seed)
        counts = {"votes": len(rows), "prompts": len(np.unique(groups[rows]))}
        self.reporter.event(
            INFO,
            f"comparing the candidates on {counts['votes']:,} of the {votes:,} training votes "
            f"({counts['prompts']:,} prompts drawn at random); the winner alone is then fitted "
            "on every vote",
        )
        return rows, counts

    def _smoothing_candidates(
        self, embeddings: np.ndarray, groups: np.ndarray, words: torch.Tensor | None = None
    ) -> list[tuple[Smoothing, np.ndarray]]:
        """One filled :class:`Smoothing` per candidate (k, steps), anchored on the training
        prompts (at most ``MAX_ANCHORS``), with the training rows' smoothed embeddings;
        given the rows' ``words`` (mean token embeddings), neighbours are searched with them
        too (``LEXICAL_WEIGHT``). The neighbour searches (anchor graph, each row's nearest
        anchors) run once per ``k``."""
        rows = choose_anchors(embeddings, groups, self.config.seed)
        anchors, queries = torch.as_tensor(embeddings[rows]), torch.as_tensor(embeddings)
        anchor_words = None if words is None else words[torch.from_numpy(rows)]
        lexical = 0.0 if words is None else LEXICAL_WEIGHT
        graphs: dict[int, torch.Tensor] = {}
        nearest: dict[int, torch.Tensor] = {}
        out = []
        for k, steps in candidates_for(len(rows)):
            smoother = Smoothing(len(rows), embeddings.shape[1], k, steps, lexical,
                                 None if words is None else words.shape[1])  # fmt: skip
            graphs[smoother.k] = smoother.fill(anchors, anchor_words, graphs.get(smoother.k))
            if smoother.k not in nearest:
                nearest[smoother.k] = smoother.nearest(queries, words)
            out.append((smoother, smoother.average(nearest[smoother.k]).numpy()))
        return out

    def _fit_neighbours(self, report, groups: np.ndarray) -> None:
        """Cross-validate neighbourhood leaderboards around the fitted head (bt, bt-tie and
        unweighted votes only) and attach them when they beat the head alone."""
        config, train = self.config, self.data.train
        if not config.neighbours:
            return
        if config.style_control:
            self.reporter.event(WARNING, "--neighbours: not with --style-control (the stored "
                                "votes carry no style terms); skipped")
            return
        if self.family not in NEIGHBOUR_FAMILIES or train.weights is not None:
            self.reporter.event(WARNING, f"--neighbours: only for unweighted "
                                f"{' or '.join(NEIGHBOUR_FAMILIES)} votes; skipped")  # fmt: skip
            return
        if len(train) > NEIGHBOUR_MAX_VOTES:
            self.reporter.event(
                INFO,
                f"neighbourhoods: skipped above {NEIGHBOUR_MAX_VOTES:,} training votes (the "
                "linear head has the data; stored votes and their search would grow with it)",
            )
            return
        models = len(self.data.models)
        if len(train) * models**2 > NEIGHBOUR_MAX_WORK:
            self.reporter.event(
                INFO,
                f"neighbourhoods: skipped for {len(train):,} training votes among {models} "
                f"models (their cross-validation grows with votes x models^2, here past "
                f"{NEIGHBOUR_MAX_WORK:,}; the linear head has the data)",
            )
            return
        hidden = self.model.config.hidden_size
        embeddings = self.features["train"][:, :hidden].float().cpu()
        choice = cross_validate_neighbours(
            embeddings.numpy(), train.labels, report.held_out_coefs, report.folds_of_votes,
            groups, self.family,
        )  # fmt: skip
        self.head_fit["neighbours"] = choice.to_dict()
        if choice.k is None:
            self.reporter.event(
                INFO,
                f"neighbourhoods: no clear gain over the linear head ({choice.gain:+.4f} ± "
                f"{choice.gain_se:.4f} per vote held out): not used",
            )
            return
        module = self.model.attach_neighbours(choice.k, choice.penalty, len(train))
        with torch.no_grad():
            module.anchors.copy_(torch.nn.functional.normalize(embeddings, dim=-1).half())
            module.labels.copy_(torch.as_tensor(train.labels, dtype=torch.int32))
        self.reporter.event(
            INFO,
            f"neighbourhoods: the {choice.k} nearest training votes, penalty {choice.penalty:g}: "
            f"held-out NLL {choice.cv_nll[f'{choice.k}/{choice.penalty:g}']:.4f} vs "
            f"{choice.cv_nll_head:.4f} for the linear head ({choice.gain:+.4f} ± "
            f"{choice.gain_se:.4f} per vote)",
        )

    def _epoch_order(self, epoch: int) -> np.ndarray:
        train = self.data.train
        return epoch_order(
            len(train),
            epoch,
            self.config.seed,
            chrono=self.config.chrono,
            tstamp=train.tstamp,
            lengths=self.lengths if self.config.group_by_length else None,
            global_batch=self.layout.global_batch,
        )

    def _train_step(self, order: np.ndarray) -> bool:
        """One optimizer step; ``False`` when a stop signal arrived part-way (the partial
        step is dropped, so the checkpoint stays at the previous step)."""
        accelerator, state, layout = self.accelerator, self.state, self.layout
        rank = accelerator.process_index
        start = state.step_in_epoch * layout.global_batch
        examples = order[start : start + layout.global_batch]
        train = self.data.train
        total = step_weight(
            train.labels[examples],
            None if train.weights is None else train.weights[examples],
            self.family,
        )
        started = time.perf_counter()
        snapshot, accumulation_counter = rng_snapshot(), accelerator.step
        for micro in range(layout.grad_accum):
            if micro and self._should_stop():
                restore_rng(snapshot)
                accelerator.step = accumulation_counter
                return False
            idx = layout.micro_batch(examples, micro, rank)
            with accelerator.accumulate(self.wrapped):
                coefs, eta = self._forward("train", idx, self.wrapped)
                labels, weights = self._votes("train", idx)
                local = step_weight(
                    train.labels[idx], None if train.weights is None else train.weights[idx],
                    self.family,
                )  # fmt: skip
                coefs = with_style_offset(coefs, labels, self._offset("train", idx))
                nll = labels_nll(coefs, labels, eta, self.family, weights)
                share = local / total * layout.processes * layout.grad_accum if total > 0 else 0.0
                accelerator.backward(nll * share)
                if accelerator.sync_gradients and self.config.max_grad_norm > 0:
                    norm = accelerator.clip_grad_norm_(
                        self.wrapped.parameters(), self.config.max_grad_norm
                    )
                    self.window.grad_norm = norm
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            self.window.add(nll.detach().double() * local, local, len(idx))
        self.window.lr = self.scheduler.get_last_lr()[0]
        self.scheduler.step()
        state.step += 1
        state.step_in_epoch += 1
        state.examples += layout.global_batch
        self.window.seconds += time.perf_counter() - started
        return True

    def _after_step(self, end_of_epoch: bool) -> None:
        config, state = self.config, self.state
        last = state.step >= self.total_steps
        if state.step % config.log_every == 0 or last:
            self._log_train()
        evaluate = (
            (config.eval_every and state.step % config.eval_every == 0)
            or (not config.eval_every and end_of_epoch)
            or last
        )
        if evaluate:
            self._evaluate()
        save_every = config.save_every
        if (save_every and state.step % save_every == 0) or (not save_every and evaluate):
            self._save_checkpoint()

    def _should_stop(self) -> bool:
        if self.accelerator.num_processes == 1:
            return self.signals.received is not None
        if self.signals.received is not None:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    # ------------------------------------------------------------------------- validation

    @torch.no_grad()
    def _predict_val(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Coefficients and eta for every validation prompt, on every process."""
        module = self.accelerator.unwrap_model(self.wrapped)
        was_training = module.training
        module.eval()
        n = len(self.data.val)
        if self.features is not None:
            coefs, eta = self._forward("val", np.arange(n), module)
            result = (coefs.cpu().numpy(), None if eta is None else eta.cpu().numpy())
            module.train(was_training)
            return result
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        batch = self.config.eval_batch_size or 2 * self.config.batch_size
        lengths = np.array([min(len(r), self.model.info.max_length) for r in self.token_ids["val"]])
        by_length = np.argsort(-lengths, kind="stable")
        shard = by_length[rank::world]
        rounds = math.ceil(math.ceil(n / world) / batch)
        parts = []
        for r in range(rounds):
            idx = shard[r * batch : (r + 1) * batch]
            # every process runs the same number of forward passes (sharded weights need it)
            run_idx = idx if len(idx) else by_length[:1]
            with self.accelerator.autocast():
                coefs, eta = self._forward("val", run_idx, module)
            if len(idx):
                parts.append(
                    (idx, coefs.cpu().numpy(), None if eta is None else eta.cpu().numpy())
                )
        module.train(was_training)
        gathered = gather_object(parts) if world > 1 else parts
        index = np.concatenate([p[0] for p in gathered])
        coefs = np.empty((n, len(self.data.models)), dtype=np.float32)
        coefs[index] = np.concatenate([p[1] for p in gathered])
        eta = None
        if gathered[0][2] is not None:
            eta = np.empty(n, dtype=np.float32)
            eta[index] = np.concatenate([p[2] for p in gathered])
        return coefs, eta

    def _evaluate(self) -> None:
        state = self.state
        state.last_eval_step = state.step
        if len(self.data.val) == 0:
            return
        coefs, eta = self._predict_val()
        metrics = self._metrics(coefs, eta)
        val = {"p2l": metrics, "marginal": self.baseline}
        improved = state.best_nll is None or metrics["nll"] < state.best_nll
        if improved:
            state.best_nll, state.best_step, state.best_val = metrics["nll"], state.step, val
            state.evals_since_best = 0
            self._keep_best(coefs, eta)
        else:
            state.evals_since_best += 1
            if self.config.patience and state.evals_since_best >= self.config.patience:
                state.stopped_early = True
        self._log({"type": "eval", "val": val, "best": improved})
        mark = " best" if improved else ""
        self.reporter.event(
            INFO,
            f"step {state.step:>6}  val NLL {_fmt(metrics, 'nll')} "
            f"(marginal {_fmt(self.baseline, 'nll')})  accuracy {_fmt(metrics, 'accuracy')} "
            f"(marginal {_fmt(self.baseline, 'accuracy')}){mark}",
        )
        if state.stopped_early:
            self.reporter.event(
                INFO, f"no improvement in {self.config.patience} validations: stopping early"
            )

    def _keep_best(self, coefs: np.ndarray, eta: np.ndarray | None) -> None:
        """Put the best weights so far in the model folder (kept in memory, and written at
        the end, when only the head is trained) with the leaderboard of the val prompts."""
        if self.features is not None:
            head = self.accelerator.unwrap_model(self.wrapped)
            self.best_head = {k: v.detach().cpu().clone() for k, v in head.state_dict().items()}
        else:
            self._write_model_folder()
        if self.accelerator.is_main_process:
            weights = self.data.val.weights
            theta, _ = aggregate(coefs, eta, family=self.family, weights=weights)
            write_json(
                self.out / "leaderboard.json",
                {
                    "family": self.family,
                    "source": "validation prompts",
                    "step": self.state.step,
                    "rows": leaderboard_rows(np.asarray(theta), self.data.models),
                },
            )

    # ------------------------------------------------------------------------ model folder

    def training_config(self) -> dict:
        config = self.config.to_dict()
        config.pop("loss")  # the folder names these loss_type / head_type
        config.pop("head")
        config.update(
            data=str(Path(self.data_dir).resolve()),
            train_votes=len(self.data.train),
            val_votes=len(self.data.val),
            processes=self.accelerator.num_processes,
            global_batch=self.layout.global_batch,
            versions=versions(),
        )
        if self.style is not None:
            config["style"] = self.style
        return config

    def _write_model_folder(self) -> None:
        accelerator = self.accelerator
        if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
            full = accelerator.get_state_dict(self.wrapped)  # a collective: every process
            tensors = None
            if accelerator.is_main_process:
                tensors = {k: v.detach().cpu().contiguous() for k, v in full.items()}
        else:
            tensors = state_dict_for_saving(self.model) if accelerator.is_main_process else None
        if accelerator.is_main_process:
            save_p2l(self.model, self.tokenizer, self.out, self.training_config(), tensors)
        accelerator.wait_for_everyone()

    def _write_frozen_model_folder(self) -> None:
        """With a frozen backbone: the backbone plus the best head."""
        if self.best_head is not None:
            current = {k: v.detach().clone() for k, v in self.model.head.state_dict().items()}
            self.model.head.load_state_dict(self.best_head)
        else:
            current = None
        self.model.model.to("cpu")
        if self.accelerator.is_main_process:
            save_p2l(self.model, self.tokenizer, self.out, self.training_config())
        if current is not None:
            self.model.head.load_state_dict(current)
        self.accelerator.wait_for_everyone()

    # ------------------------------------------------------------------------- checkpoints

    def _save_checkpoint(self) -> None:
        accelerator, state = self.accelerator, self.state
        root = self.out / CHECKPOINTS
        tmp, last, old = root / (LAST + ".tmp"), root / LAST, root / (LAST + ".old")
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        state.last_save_step = state.step
        accelerator.save_state(str(tmp))
        # every process writes its own files into tmp (its RNG state): all must be done before
        # the main process renames the folder
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if self.best_head is not None:
                from safetensors.torch import save_file

                save_file(self.best_head, str(tmp / BEST_HEAD))
            write_json(tmp / STATE_FILE, asdict(state))
            shutil.rmtree(old, ignore_errors=True)
            if last.exists():
                last.rename(old)
            tmp.rename(last)
            shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()

    def _load_checkpoint(self) -> None:
        found = checkpoint_dir(self.out)
        assert found is not None  # checked before the trainer was built
        saved = TrainerState.from_dict(json.loads((found / STATE_FILE).read_text()))
        if saved.processes != self.accelerator.num_processes:
            raise UserError(
                f"--resume: the checkpoint was written by {saved.processes} process(es); "
                f"resume with the same number (now {self.accelerator.num_processes})"
            )
        if saved.data_fingerprint != self.state.data_fingerprint:
            raise UserError(
                f"--resume: {self.data_dir} is not the data the checkpoint was trained on"
            )
        self.accelerator.load_state(str(found))
        if (found / BEST_HEAD).is_file():
            from safetensors.torch import load_file

            self.best_head = load_file(str(found / BEST_HEAD))
        saved.config = self.config.to_dict()  # operational settings may have changed
        self.state = saved
        self.reporter.event(
            INFO, f"resuming from {found} at step {saved.step} (epoch {saved.epoch + 1})"
        )

    # ----------------------------------------------------------------------------- endings

    def _interrupted(self) -> TrainResult:
        self._save_checkpoint()
        if self.features is not None:
            self._write_frozen_model_folder()
        result = TrainResult(self.out, "interrupted", self.state, signal=self.signals.received)
        self.reporter.event(
            NOTICE,
            f"stopped by {result.signal} at step {self.state.step}; checkpoint in "
            f"{self.out / CHECKPOINTS / LAST} (continue with --resume)",
        )
        raise TrainingInterrupted(result)

    def _pause(self) -> TrainResult:
        if self.state.last_save_step != self.state.step:
            self._save_checkpoint()
        if self.features is not None:
            self._write_frozen_model_folder()
        self.reporter.event(
            INFO,
            f"paused after step {self.state.step} of {self.total_steps}; "
            f"continue with --resume ({self.out / CHECKPOINTS / LAST})",
        )
        return TrainResult(self.out, "paused", self.state)

    def _finish(self) -> TrainResult:
        state = self.state
        if state.last_eval_step != state.step:
            self._evaluate()
        if state.last_save_step != state.step:
            self._save_checkpoint()
        if self.features is not None:
            self._write_frozen_model_folder()
        elif state.best_step is None:
            self._write_model_folder()  # no validation votes: the last weights
        metrics = {
            "val": state.best_val,
            "best_step": state.best_step if state.best_step is not None else state.step,
            "steps": state.step,
            "epochs": round(state.step / self.steps_per_epoch, 4),
            "train_votes": len(self.data.train),
            "val_votes": len(self.data.val),
            "stopped_early": state.stopped_early,
            "selected_on": self._selected_on(),
        }
        if self.head_fit is not None:
            metrics["head_fit"] = self.head_fit
        metrics.update(self._peak_gpu_memory())
        if self.accelerator.is_main_process:
            write_json(self.out / "metrics.json", metrics)
        self._summary(metrics)
        return TrainResult(self.out, "finished", state, metrics)

    def _selected_on(self) -> str:
        """Which votes chose the weights: the validation votes are then not held out."""
        if self.config.head_solver == "ridge-cv":
            return "train (cross-validation)"
        return "val (best checkpoint)" if len(self.data.val) else "train (last step)"

    # ------------------------------------------------------------------------------ output

    def _announce(self) -> None:
        data, info, layout = self.data, self.model.info, self.layout
        mode = "head only (frozen backbone)" if self.features is not None else "full fine-tuning"
        rank = f", rank {info.head_rank}" if info.head_rank else ""
        if info.head_hidden:
            rank = f", hidden layer {info.head_hidden} ({info.head_activation})"
        self.reporter.event(
            INFO,
            f"data: {len(data.train):,} train / {len(data.val):,} val votes, "
            f"{len(data.models)} models\n"
            f"model: {self.config.backbone} ({info.model_type}), pooling {info.pooling}, "
            f"{info.head_type} head{rank}, loss {self.family}, {mode}\n"
            f"steps: {self.total_steps} ({self.steps_per_epoch} per epoch; global batch "
            f"{layout.global_batch} = {layout.batch_size} x {layout.processes} process(es) x "
            f"{layout.grad_accum} accumulation)",
        )
        if self.baseline:
            self.reporter.event(
                INFO,
                f"marginal leaderboard (fit on train votes): val NLL {self.baseline['nll']:.4f}, "
                f"accuracy {self.baseline['accuracy']:.4f}",
            )

    def _summary(self, metrics: dict) -> None:
        val = metrics["val"] or {}
        p2l, marginal = val.get("p2l"), val.get("marginal")
        self.reporter.event(
            INFO,
            f"done: {metrics['steps']} steps; best step {metrics['best_step']}: "
            f"val NLL {_fmt(p2l, 'nll')} vs marginal {_fmt(marginal, 'nll')}, accuracy "
            f"{_fmt(p2l, 'accuracy')} vs {_fmt(marginal, 'accuracy')}\n"
            f"wrote {self.out} (best weights; resumable state in {CHECKPOINTS}/{LAST})",
        )

    def _log(self, record: dict) -> None:
        if not self.accelerator.is_main_process:
            return
        state = self.state
        line = {
            "step": state.step,
            "epoch": round(state.step / self.steps_per_epoch, 4),
            **record,
            "time": round(time.time(), 3),
        }
        with open(self.out / METRICS_LOG, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")

    def _peak_gpu_memory(self) -> dict:
        """``peak_gpu_memory_mib``: the most GPU memory torch has held for tensors in this
        run, the largest over processes (nothing on the CPU)."""
        if self.device.type != "cuda":
            return {}
        peak = float(torch.cuda.max_memory_allocated(self.device))
        if self.accelerator.num_processes > 1:
            peak = float(self.accelerator.reduce(
                torch.tensor(peak, device=self.device), reduction="max"
            ))  # fmt: skip
        return {"peak_gpu_memory_mib": round(peak / 2**20)}

    def _log_train(self) -> None:
        window = self.window
        totals = torch.stack([
            torch.as_tensor(window.loss_sum, dtype=torch.float64, device=self.device),
            torch.tensor(window.weight, dtype=torch.float64, device=self.device),
            torch.tensor(window.examples, dtype=torch.float64, device=self.device),
        ])  # fmt: skip
        if self.accelerator.num_processes > 1:
            totals = self.accelerator.reduce(totals, reduction="sum")
        loss_sum, weight, examples = (float(x) for x in totals.cpu())
        seconds = max(window.seconds, 1e-9)
        if self.accelerator.num_processes > 1:  # the slowest process sets the pace
            seconds = float(self.accelerator.reduce(
                torch.tensor(seconds, dtype=torch.float64, device=self.device), "max"
            ))  # fmt: skip
        self._log({
            "type": "train",
            "loss": loss_sum / weight if weight > 0 else None,
            "lr": window.lr,
            "grad_norm": None if window.grad_norm is None else float(window.grad_norm),
            "examples_per_s": round(examples / seconds, 2),
            "step_seconds": round(seconds / max(1, examples / self.layout.global_batch), 4),
            **self._peak_gpu_memory(),
        })  # fmt: skip
        window.reset()

    def _trim_log(self) -> None:
        """On resume, drop log lines written after the checkpoint (they will be redone)."""
        path = self.out / METRICS_LOG
        if not (self.accelerator.is_main_process and self.options.resume and path.is_file()):
            return
        kept = [
            line for line in path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= self.state.step
        ]  # fmt: skip
        path.write_text("".join(line + "\n" for line in kept))

    def cleanup(self) -> None:
        self.accelerator.free_memory()
        if self.accelerator.num_processes > 1:
            self.accelerator.end_training()


@dataclass
class _Window:
    """Training loss and throughput since the last log line; time spent validating or
    checkpointing does not count against throughput."""

    loss_sum: float | torch.Tensor = 0.0  # a tensor on the device while training (no sync)
    weight: float = 0.0
    examples: int = 0
    seconds: float = 0.0
    lr: float | None = None
    grad_norm: float | torch.Tensor | None = None
    recent_loss: float | None = None
    recent_rate: float | None = None

    def add(self, loss_sum, weight: float, examples: int) -> None:
        self.loss_sum += loss_sum
        self.weight += weight
        self.examples += examples

    def rate(self) -> float | None:
        return self.examples / self.seconds if self.seconds > 0 and self.examples else None

    def reset(self) -> None:
        if self.weight > 0:
            self.recent_loss = float(self.loss_sum) / self.weight
        self.recent_rate = self.rate() or self.recent_rate
        self.loss_sum, self.weight, self.examples, self.seconds = 0.0, 0.0, 0, 0.0

    def status(self) -> str:
        loss = float(self.loss_sum) / self.weight if self.weight > 0 else self.recent_loss
        rate = self.rate() or self.recent_rate
        parts = []
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if rate is not None:
            parts.append(f"{rate:,.1f} ex/s")
        return " · ".join(parts)


def _cv_summary(report) -> str:
    """One ridge candidate's cross-validation result, for its progress line."""
    if report.penalty is None:
        return (f"no clear gain over the marginal leaderboard (held-out NLL "
                f"{min(report.cv_nll.values()):.4f} at best vs {report.cv_nll_marginal:.4f})")  # fmt: skip
    return (f"held-out NLL {report.best_cv_nll:.4f} vs marginal {report.cv_nll_marginal:.4f} "
            f"at penalty {report.penalty:.3g}")  # fmt: skip


def _candidate_name(smoothing: tuple[int, int] | None, steps_read: bool, steps: int) -> str:
    """How ``head_fit.cv_nll_by_candidate`` names a ridge candidate."""
    name = "raw" if smoothing is None else f"smoothed {smoothing[0]}/{smoothing[1]}"
    return name + ("" if steps_read or not steps else ", no length steps")
