"""`p2l push`: publish a model folder (or a battles/predictions file) to the Hugging Face Hub."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from p2l_cli.ui import QuietOption, console, set_quiet

HUB, FILES, CARD = "Hub", "Files", "Card"


class RepoType(str, Enum):
    model = "model"
    dataset = "dataset"


def push(
    source: Annotated[
        Path,
        typer.Argument(
            help="The model folder (p2l train output or a published P2L checkpoint); with "
            "--repo-type dataset a battles or predictions Parquet file, or a prepare folder.",
            show_default=False,
        ),
    ],
    repo_id: Annotated[
        str,
        typer.Option("--repo-id", help="The repository on the Hub: ORG/NAME.",
                     rich_help_panel=HUB, show_default=False),
    ],
    repo_type: Annotated[
        RepoType, typer.Option("--repo-type", help="A model repo, or a dataset repo for a "
                               "battles or predictions file.", rich_help_panel=HUB)
    ] = RepoType.model,
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (an existing repo keeps "
                           "its visibility).", rich_help_panel=HUB)
    ] = False,
    revision: Annotated[
        str | None, typer.Option("--revision", help="Branch to commit to (created if missing; "
                                 "default main).", rich_help_panel=HUB)
    ] = None,
    commit_message: Annotated[
        str | None, typer.Option("--commit-message", help="The commit's summary line.",
                                 rich_help_panel=HUB)
    ] = None,
    token: Annotated[
        str | None, typer.Option("--token", help="A Hub token with write access (default: "
                                 "HF_TOKEN, else the saved `hf auth login`).",
                                 rich_help_panel=HUB)
    ] = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", help="The Hub's URL (default: HF_ENDPOINT, "
                                 "else https://huggingface.co).", rich_help_panel=HUB)
    ] = None,
    include_checkpoints: Annotated[
        bool, typer.Option("--include-checkpoints", help="Also upload checkpoints/ and "
                           "training state, their safetensors and JSON files; pickles "
                           "(optimizer.bin, *.pkl, *.pt) and secrets never.",
                           rich_help_panel=FILES)
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the files (stderr) and print the card "
                           "(stdout); upload nothing, no token needed.",
                           rich_help_panel=FILES)
    ] = False,
    license: Annotated[
        str | None, typer.Option("--license", help="The card's license id, e.g. apache-2.0 "
                                 "(default: training_config.json's, else 'unknown').",
                                 rich_help_panel=CARD, show_default=False)
    ] = None,
    quiet: QuietOption = False,
) -> None:
    """Publish a P2L model to the Hugging Face Hub in one commit, with a model card.

    Only what belongs to a model goes up: never secrets, caches or pickles.

    Checkpoints and training state only with --include-checkpoints (pickles never).

    The local folder is never modified.

    Example:

      p2l push model/ --repo-id my-org/p2l-minilm --private

      p2l push model/ --repo-id my-org/p2l-minilm --dry-run > README.md

      p2l push preds.parquet --repo-id my-org/p2l-preds --repo-type dataset
    """
    set_quiet(quiet or console.quiet)  # keep a global `p2l -q push ...`
    from p2l_cli import hub  # yaml, and huggingface_hub later: only when pushing
    hub.check_repo_id(repo_id)
    if dry_run:
        token = hub.known_token(token)  # only to keep it out of the files; may be None
    else:
        hub.ensure_online()
        token = hub.resolve_token(token)
    if repo_type is RepoType.model:
        upload = hub.build_model_upload(source, repo_id, license, include_checkpoints, token)
    else:
        upload = hub.build_dataset_upload(source, repo_id, license, token)
    show_plan(upload, repo_id, dry_run)
    if dry_run:
        sys.stdout.write(upload.card)
        sys.stdout.flush()
        return
    result = hub.push_upload(
        upload, repo_id, token=token, endpoint=endpoint, private=private, revision=revision,
        commit_message=commit_message, progress_bars=console.is_terminal and not console.quiet,
    )
    console.print(f"pushed {len(upload.files)} files ({hub.human_size(upload.total_size)}) "
                  f"to {result.repo_url} in one commit: {result.commit_url}", markup=False,
                  soft_wrap=True)


def show_plan(upload, repo_id: str, dry_run: bool) -> None:
    """The files that go up (with sizes) and the ones left out (with reasons), on stderr."""
    from rich.markup import escape
    from rich.table import Table

    from p2l_cli.hub import human_size

    verb = "would upload" if dry_run else "uploading"
    console.print(f"{repo_id} ({upload.repo_type}): {verb} {len(upload.files)} files "
                  f"({human_size(upload.total_size)})", markup=False, soft_wrap=True)
    table = Table(show_edge=False)
    table.add_column("File")
    table.add_column("Size", justify="right")
    for f in upload.files:
        generated = " (generated)" if f.content is not None else ""
        table.add_row(escape(f.path_in_repo) + generated, human_size(f.size))
    console.print(table)
    if upload.skipped:
        console.print(f"left out {len(upload.skipped)}:")
        left_out = Table(show_edge=False)
        left_out.add_column("Path")
        left_out.add_column("Reason")
        for s in upload.skipped:
            left_out.add_row(escape(s.path), escape(s.reason))
        console.print(left_out)
