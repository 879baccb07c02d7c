"""`p2l train`: fine-tune a P2L model on prepared votes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from p2l_cli.ui import ConsoleReporter, QuietOption, set_quiet

MODEL, OPTIM, DATA, RUN = "Model", "Optimisation", "Data and batches", "Validation and checkpoints"
# The command's parameters that are not training settings; every other parameter is the
# TrainConfig field of the same name (checked by config_overrides).
RUN_OPTIONS = (
    "data_dir", "output", "recipe", "resume", "overwrite", "stop_after", "cache_dir",
    "quiet",
)  # fmt: skip


def config_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The training settings among the command's parsed parameters (``None``: not given)."""
    from p2l_cli.train_config import FIELDS, RECIPE_ONLY

    not_settings = set(params) - set(FIELDS) - set(RUN_OPTIONS)
    strays = sorted(not_settings | (set(params) & set(RECIPE_ONLY)))
    if strays:
        raise RuntimeError(f"p2l train: options that are no command-line settings: {strays}")
    return {name: value for name, value in params.items() if name in FIELDS}


def train(
    ctx: typer.Context,
    data_dir: Annotated[
        Path,
        typer.Argument(help="Prepared data folder (train.parquet, val.parquet, models.json "
                       "from `p2l prepare`).", show_default=False),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Model folder to write (best weights, "
                     "training_config.json, metrics, checkpoints/).", show_default=False),
    ],
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", "-r", help="Recipe YAML file or name in recipes/ (e.g. "
                     "minilm-cpu, qwen2.5-1.5b). Flags override it. Default: minilm-cpu "
                     "unless --backbone is given.", rich_help_panel=MODEL, show_default=False),
    ] = None,
    backbone: Annotated[
        str | None,
        typer.Option(help="Backbone: a local folder, a Hub id in the cache, or minilm (the "
                     "embedded CPU model).", rich_help_panel=MODEL, show_default=False),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(help="Likelihood: auto (bt-tie when the votes hold ties, else bt), bt, "
                     "bt-tie, rk, grk (bag), rk-reparam (Rao-Kupper, reparameterised tie) or "
                     "ba (grk with a learned reference strength).", rich_help_panel=MODEL,
                     show_default=False),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(help="Head: bt, rk (coefficients + tie eta; implied by rk, grk and "
                     "rk-reparam) or ba (+ gamma; implied by ba).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    head_rank: Annotated[
        int | None,
        typer.Option(help="Low-rank head: project the pooled state to this many dimensions "
                     "first (few parameters; helps with few votes).", rich_help_panel=MODEL,
                     show_default=False),
    ] = None,
    head_downsize: Annotated[
        int | None,
        typer.Option(help="Low-rank head of the reference implementation "
                     "(linear_head_downsize_factor): rank = number of models // this factor, "
                     "with a bias on the first layer.", rich_help_panel=MODEL,
                     show_default=False),
    ] = None,
    head_rank_bias: Annotated[
        bool | None,
        typer.Option("--head-rank-bias/--no-head-rank-bias", help="Give the low-rank head's "
                     "first layer a bias (as the reference implementation does).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    head_eta_downsize: Annotated[
        bool | None,
        typer.Option("--head-eta-downsize/--no-head-eta-downsize", help="rk head with a "
                     "rank: read eta from the low-rank layer (the reference's eta_downsize) "
                     "instead of the pooled state.", rich_help_panel=MODEL, show_default=False),
    ] = None,
    head_hidden: Annotated[
        int | None,
        typer.Option(help="Hidden-layer head: normalise the pooled state, map it to this many "
                     "units through --head-activation, then to the coefficients (learns "
                     "topic-dependent leaderboards a linear head cannot).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    head_activation: Annotated[
        str | None,
        typer.Option(help="The hidden-layer head's nonlinearity: gelu (an MLP) or softmax (a "
                     "gated mixture of --head-hidden leaderboards).", rich_help_panel=MODEL,
                     show_default=False),
    ] = None,
    head_init: Annotated[
        str | None,
        typer.Option(help="Head weights at start: normal, zeros (start exactly at the "
                     "marginal leaderboard), xavier, or the reference's reset_params, "
                     "he_unif, xavier_unif, tiny_normal (its init_type).", rich_help_panel=MODEL,
                     show_default=False),
    ] = None,
    marginal_init: Annotated[
        bool | None,
        typer.Option("--marginal-init/--no-marginal-init", help="Start the head's bias (and "
                     "eta) at the marginal leaderboard fit on the training votes.",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    pooling: Annotated[
        str | None,
        typer.Option(help="cls (token appended to the prompt; decoders), first or mean "
                     "(encoders).", rich_help_panel=MODEL, show_default=False),
    ] = None,
    max_length: Annotated[
        int | None,
        typer.Option(help="Tokens per prompt; longer prompts lose their beginning.",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    freeze_backbone: Annotated[
        bool | None,
        typer.Option("--freeze-backbone/--no-freeze-backbone", help="Train only the head on "
                     "pooled states computed once and cached (fast on CPU).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    head_solver: Annotated[
        str | None,
        typer.Option(help="How the head is fitted: adamw (steps, early stopping on the "
                     "validation votes) or ridge-cv (frozen backbone, linear head: exact fit, "
                     "penalty chosen by cross-validation over the training votes).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    cv_folds: Annotated[
        int | None,
        typer.Option(help="Folds of --head-solver ridge-cv (split by prompt).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    neighbours: Annotated[
        bool | None,
        typer.Option("--neighbours/--no-neighbours", help="With ridge-cv: refine each "
                     "prompt's leaderboard by the votes on its nearest training prompts, "
                     "when cross-validation says it helps (bt, bt-tie).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    smoothing: Annotated[
        bool | None,
        typer.Option("--smoothing/--no-smoothing", help="With ridge-cv: average each "
                     "prompt's embedding over its nearest training prompts (a few hops on "
                     "their similarity graph) before the head, when cross-validation says it "
                     "helps.", rich_help_panel=MODEL, show_default=False),
    ] = None,
    model_covariance: Annotated[
        bool | None,
        typer.Option("--model-covariance/--no-model-covariance", help="With ridge-cv: refit "
                     "the chosen head with a penalty that lets each prompt feature move models "
                     "together along the directions across models that the first fit found "
                     "(from each fold's own first fit).", rich_help_panel=MODEL,
                     show_default=False),
    ] = None,
    selection_votes: Annotated[
        int | None,
        typer.Option(help="With ridge-cv: above twice this many training votes, compare the "
                     "candidate heads on a random subsample of whole prompts holding about "
                     "this many votes, then fit only the winner on every vote "
                     "(the minilm-cpu recipe: 25000).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    normalize: Annotated[
        bool | None,
        typer.Option("--normalize/--no-normalize", help="L2-normalise the pooled state "
                     "(sentence-embedding style).", rich_help_panel=MODEL, show_default=False),
    ] = None,
    prompt_features: Annotated[
        bool | None,
        typer.Option("--prompt-features/--no-prompt-features", help="Append prompt "
                     "descriptors (length, turns, shares of digits, code and math symbols, CJK "
                     "and other scripts, tokens unknown to the vocabulary, and length steps: "
                     "more than 8, 16, ..., 2048 tokens), counted over the whole prompt, to the "
                     "pooled state; ridge-cv reads the steps when cross-validation says they "
                     "help.", rich_help_panel=MODEL,
                     show_default=False),
    ] = None,
    gradient_checkpointing: Annotated[
        bool | None,
        typer.Option("--gradient-checkpointing/--no-gradient-checkpointing",
                     help="Recompute activations in the backward pass (less memory).",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (bf16 on GPUs that support it, else fp32), bf16, fp16, fp32.",
                     rich_help_panel=MODEL, show_default=False),
    ] = None,
    epochs: Annotated[
        int | None,
        typer.Option(help="Passes over the training votes.", rich_help_panel=OPTIM,
                     show_default=False),
    ] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(help="Optimizer steps in all (overrides --epochs; sets the schedule's "
                     "length).", rich_help_panel=OPTIM, show_default=False),
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help="Peak learning rate.", rich_help_panel=OPTIM, show_default=False),
    ] = None,
    head_lr: Annotated[
        float | None,
        typer.Option(help="Learning rate of the head (default: --lr).", rich_help_panel=OPTIM,
                     show_default=False),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help="Votes per process and micro-step.", rich_help_panel=OPTIM,
                     show_default=False),
    ] = None,
    grad_accum: Annotated[
        int | None,
        typer.Option(help="Micro-steps per optimizer step (global batch = batch size x "
                     "processes x this).", rich_help_panel=OPTIM, show_default=False),
    ] = None,
    warmup: Annotated[
        float | None,
        typer.Option(help="Warmup: a fraction of the steps (< 1) or a number of steps.",
                     rich_help_panel=OPTIM, show_default=False),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Learning-rate schedule after warmup: constant, linear or cosine.",
                     rich_help_panel=OPTIM, show_default=False),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help="AdamW weight decay (not on biases and norms).",
                     rich_help_panel=OPTIM, show_default=False),
    ] = None,
    adam_eps: Annotated[
        float | None,
        typer.Option(help="AdamW epsilon.", rich_help_panel=OPTIM, show_default=False),
    ] = None,
    max_grad_norm: Annotated[
        float | None,
        typer.Option(help="Clip the gradient norm (0: no clipping).", rich_help_panel=OPTIM,
                     show_default=False),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(help="Seed for the head's initialisation, the shuffles and dropout.",
                     rich_help_panel=OPTIM, show_default=False),
    ] = None,
    chrono: Annotated[
        bool | None,
        typer.Option("--chrono/--no-chrono", help="Keep the votes' time order (tstamp, else "
                     "file order) instead of shuffling, as the paper trains.",
                     rich_help_panel=DATA, show_default=False),
    ] = None,
    group_by_length: Annotated[
        bool | None,
        typer.Option("--group-by-length/--no-group-by-length", help="Batch prompts of "
                     "similar length together (less padding).", rich_help_panel=DATA,
                     show_default=False),
    ] = None,
    weighted: Annotated[
        bool | None,
        typer.Option("--weighted/--no-weighted", help="Weight each vote's loss by the data's "
                     "'weight' column.", rich_help_panel=DATA, show_default=False),
    ] = None,
    style_control: Annotated[
        bool | None,
        typer.Option("--style-control/--no-style-control", help="Hold the answers' style "
                     "fixed: fit the style coefficients on the training votes (the data's "
                     "style columns) and add each vote's style term to the loss, so that "
                     "the coefficients mean strength with style held fixed.",
                     rich_help_panel=DATA, show_default=False),
    ] = None,
    eval_every: Annotated[
        int | None,
        typer.Option(help="Validate every N steps (0: at the end of each epoch); always at "
                     "the end.", rich_help_panel=RUN, show_default=False),
    ] = None,
    eval_batch_size: Annotated[
        int | None,
        typer.Option(help="Prompts per validation batch.", rich_help_panel=RUN,
                     show_default=False),
    ] = None,
    patience: Annotated[
        int | None,
        typer.Option(help="Stop after this many validations without a better NLL.",
                     rich_help_panel=RUN, show_default=False),
    ] = None,
    log_every: Annotated[
        int | None,
        typer.Option(help="Write a metrics.jsonl line every N steps.", rich_help_panel=RUN,
                     show_default=False),
    ] = None,
    save_every: Annotated[
        int | None,
        typer.Option(help="Write checkpoints/last every N steps (default: at each "
                     "validation).", rich_help_panel=RUN, show_default=False),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue from MODEL_DIR/checkpoints/last with its "
                     "saved settings.", rich_help_panel=RUN),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Replace an existing model folder.",
                     rich_help_panel=RUN),
    ] = False,
    stop_after: Annotated[
        int | None,
        typer.Option(help="Pause with a resumable checkpoint once this many steps are done "
                     "(for time-limited jobs).", rich_help_panel=RUN, show_default=False),
    ] = None,
    cache_dir: Annotated[
        Path | None,
        typer.Option(help="Where --freeze-backbone caches features (default: "
                     "$P2L_CACHE_DIR/features or ~/.cache/p2l/features).", rich_help_panel=RUN,
                     show_default=False),
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Fine-tune a P2L model: a backbone whose head maps a prompt to a leaderboard.

    Example: p2l train data/ -o model/ --recipe minilm-cpu

    More processes: accelerate launch -m p2l_cli train data/ -o model/ --recipe qwen2.5-7b
    """
    set_quiet(quiet)
    from p2l_cli.train import RunOptions, TrainingInterrupted, train_p2l

    overrides = config_overrides(ctx.params)
    options = RunOptions(
        resume=resume, overwrite=overwrite, stop_after=stop_after, cache_dir=cache_dir,
        reporter=ConsoleReporter(),
    )  # fmt: skip
    try:
        train_p2l(data_dir, output, recipe, overrides, options)
    except TrainingInterrupted:
        raise typer.Exit(130) from None  # training said where its checkpoint is
