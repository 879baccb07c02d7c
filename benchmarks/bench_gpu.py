"""GPU benchmark: `p2l train` and `p2l predict` at the GPU recipes' real model sizes.

Nothing is downloaded: each backbone is built from the shapes of its recipe's model
(SmolLM2-135M for ``smollm2-135m``, Qwen2.5-1.5B for ``qwen2.5-1.5b``) with random weights
and a BPE tokenizer trained on the arena's prompts, so the numbers are about speed, memory
and agreement between devices, never about quality. On one `p2l simulate` arena:

1. ``train``: the recipe as it ships (bf16, gradient checkpointing, its micro-batch), with
   ``--grad-accum`` set for its global batch of 512 in one process on one GPU, for a few
   optimizer steps: votes per second (the first step left out), peak GPU memory. The head
   starts from normal weights, not the recipe's zeros, so that its coefficients vary from
   prompt to prompt in the comparison of devices below;
2. ``overhead``: in this process, p2l's optimizer step against the backbone's own forward
   and backward on the same micro-batches (what any fine-tuning pays), which goes first
   alternating: seconds per micro-step of each, and their ratio;
3. ``predict``: the validation prompts on the GPU (``--dtype auto``: bf16) and in float32 on
   the GPU and on the CPU (a sample): prompts per second, and how far each device's
   coefficients are from the CPU's float32 ones;
4. ``long``: one optimizer step on prompts of about the recipe's ``max_length`` tokens
   (the arena's prompts repeated), for peak memory at full length;
5. ``resume`` (first architecture only): the same run stopped half-way with ``--stop-after``
   and continued with ``--resume``, its weights and step losses against the uninterrupted
   run's, next to a second uninterrupted run's (the device's own run-to-run differences).

results.json is rewritten after each stage, so a run cut short keeps what it measured.

    python benchmarks/bench_gpu.py --out gpu-results                    # on a CUDA machine
    python benchmarks/bench_gpu.py --out gpu-results --archs qwen2.5-1.5b --steps 2 \
        --global-batch 64 --skip resume                                 # one size, quickly
    python benchmarks/bench_gpu.py --out /tmp/dry --archs tiny --device cpu  # a dry run

On one H200, SmolLM2-135M's shapes with ``--steps 2 --global-batch 64`` took about 3 min
(before the overhead stage); the recipes' global batch of 512 for both sizes did not finish
in 7 min.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch
from bench_quality import run_p2l, simulate_and_prepare  # this folder is on sys.path
from safetensors.torch import load_file
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoModel, LlamaConfig, PreTrainedTokenizerFast, Qwen2Config

from p2l_cli.model import collate
from p2l_cli.train import RunOptions, Trainer, make_accelerator
from p2l_cli.train_config import resolve_config

# The public configs' shapes; ``tiny`` is for a dry run of this script on a CPU.
ARCHS = {
    "smollm2-135m": (LlamaConfig, {
        "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
        "num_attention_heads": 9, "num_key_value_heads": 3, "vocab_size": 49152,
        "max_position_embeddings": 8192, "rope_theta": 100000.0, "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True}),
    "qwen2.5-1.5b": (Qwen2Config, {
        "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
        "num_attention_heads": 12, "num_key_value_heads": 2, "vocab_size": 151936,
        "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": True}),
    "tiny": (LlamaConfig, {
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 4096,
        "max_position_embeddings": 2048}),
}  # fmt: skip
RECIPES = {"smollm2-135m": "smollm2-135m", "qwen2.5-1.5b": "qwen2.5-1.5b",
           "tiny": "smollm2-135m"}  # fmt: skip


def prompt_texts(data: Path) -> list[str]:
    prompts = pl.read_parquet(data / "train.parquet", columns=["prompt"])["prompt"]
    return [turn for turns in prompts.to_list() for turn in turns]


def random_backbone(folder: Path, arch: str, texts: list[str], device: str) -> Path:
    """A backbone folder (config, bf16 weights, tokenizer) of ``arch``'s shapes."""
    config_class, shapes = ARCHS[arch]
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=min(4000, shapes["vocab_size"] - 8),
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))  # fmt: skip
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    torch.manual_seed(0)
    with torch.device(device):
        network = AutoModel.from_config(config_class(**shapes), dtype=torch.bfloat16)
    network.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def train_log(model: Path) -> list[dict]:
    lines = (model / "metrics.jsonl").read_text().splitlines()
    return [row for row in map(json.loads, lines) if row.get("type") == "train"]


def train_argv(data: Path, model: Path, backbone: Path, arch: str, steps: int,
               grad_accum: int) -> list[str]:  # fmt: skip
    return ["train", str(data), "-o", str(model), "--recipe", RECIPES[arch], "--backbone",
            str(backbone), "--grad-accum", str(grad_accum), "--max-steps", str(steps),
            "--eval-every", str(steps), "--log-every", "1", "--head-init", "normal",
            "--overwrite"]  # fmt: skip


def micro_batch(arch: str) -> int:
    """The recipe's ``batch_size``."""
    return resolve_config(RECIPES[arch], {})[0].batch_size


def accumulation(arch: str, global_batch: int) -> int:
    """``--grad-accum`` for ``global_batch`` votes per step in one process."""
    return max(1, global_batch // micro_batch(arch))


def train_run(data: Path, model: Path, backbone: Path, arch: str, steps: int,
              grad_accum: int, log: Path) -> dict:  # fmt: skip
    done = run_p2l(train_argv(data, model, backbone, arch, steps, grad_accum), log)
    metrics = json.loads((model / "metrics.json").read_text())
    rows = train_log(model)
    steady = [row["examples_per_s"] for row in rows[1:]]
    return {
        "arch": arch,
        "steps": metrics["steps"],
        "global_batch": micro_batch(arch) * grad_accum,
        "seconds": round(done.seconds, 1),
        "votes_per_s": round(float(np.median(steady)), 1) if steady else None,
        "peak_gpu_memory_mib": metrics.get("peak_gpu_memory_mib"),
        "val_nll": (metrics.get("val") or {}).get("p2l", {}).get("nll"),
        "log": rows,
    }


def resume_check(data: Path, root: Path, backbone: Path, arch: str, steps: int,
                 grad_accum: int, whole: Path, log: Path) -> dict:  # fmt: skip
    """Stop half-way, resume, and compare with the uninterrupted run ``whole``; and, for the
    device's own run-to-run noise, a second uninterrupted run against the first."""
    parts, again = root / "resumed", root / "again"
    run_p2l([*train_argv(data, parts, backbone, arch, steps, grad_accum), "--stop-after",
             str(steps // 2)], log)  # fmt: skip
    run_p2l(["train", str(data), "-o", str(parts), "--resume"], log)
    run_p2l(train_argv(data, again, backbone, arch, steps, grad_accum), log)
    last = Path("checkpoints", "last", "model.safetensors")  # the weights after the last step
    first = load_file(whole / last)

    def largest_difference(other: Path) -> float:
        weights = load_file(other / last)
        return max(float((first[k].float() - weights[k].float()).abs().max()) for k in first)

    def losses(other: Path) -> list[float]:
        return [row["loss"] for row in train_log(other)]

    return {
        "arch": arch, "steps": steps, "stopped_after": steps // 2,
        "max_abs_weight": max(float(w.float().abs().max()) for w in first.values()),
        "max_abs_weight_diff_resumed": largest_difference(parts),
        "max_abs_weight_diff_repeated": largest_difference(again),
        "step_losses": {"whole": losses(whole), "resumed": losses(parts),
                        "repeated": losses(again)},
    }  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def backbone_step(trainer: Trainer, examples: np.ndarray) -> None:
    """What any fine-tuning of the backbone pays for one optimizer step's votes: per
    micro-batch, forward (under the run's autocast) and backward of a scalar of the states;
    the gradients dropped afterwards, as an optimizer step would."""
    ids, layout = trainer.token_ids["train"], trainer.layout
    for micro in range(layout.grad_accum):
        idx = layout.micro_batch(examples, micro, 0)
        input_ids, mask = collate([ids[i] for i in idx], trainer.tokenizer.pad_token_id,
                                  trainer.device)  # fmt: skip
        with trainer.accelerator.autocast():
            states = trainer.model.model(input_ids=input_ids, attention_mask=mask)
        states.last_hidden_state.float().mean(dim=1).sum().backward()
    for param in trainer.model.parameters():
        param.grad = None


def step_overhead(data: Path, root: Path, backbone: Path, arch: str, grad_accum: int,
                  steps: int) -> dict:  # fmt: skip
    """p2l's optimizer step (collation, forward, vote NLL, backward, clipping, AdamW) against
    the backbone's own forward and backward on the same micro-batches, in this process
    (two warm-up rounds first)."""
    overrides = {"backbone": str(backbone), "grad_accum": grad_accum, "eval_every": 10**9,
                 "head_init": "normal"}  # fmt: skip
    config, _, _ = resolve_config(RECIPES[arch], overrides)
    root.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(config, data, root, make_accelerator(config), RunOptions(overwrite=True))
    trainer.setup()
    order = trainer._epoch_order(0)
    size = trainer.layout.global_batch
    p2l_times, backbone_times = [], []

    def timed(run, *args) -> float:
        synchronize(trainer.device)
        start = time.perf_counter()
        run(*args)
        synchronize(trainer.device)
        return time.perf_counter() - start

    # the same votes twice run faster the second time (memory already laid out for their
    # shapes), so which goes first alternates
    for i in range(steps + 2):
        examples = order[i * size : (i + 1) * size]
        ours = (trainer._train_step, order)  # takes step i's votes too
        theirs = (backbone_step, trainer, examples)
        if i % 2:
            p2l_time, backbone_time = timed(*ours), timed(*theirs)
        else:
            backbone_time, p2l_time = timed(*theirs), timed(*ours)
        if i >= 2:
            backbone_times.append(backbone_time)
            p2l_times.append(p2l_time)
    return {
        "micro_steps": grad_accum, "timed_steps": steps,
        "backbone_s_per_micro_step": round(float(np.median(backbone_times)) / grad_accum, 4),
        "p2l_s_per_micro_step": round(float(np.median(p2l_times)) / grad_accum, 4),
        "ratio": round(sum(p2l_times) / sum(backbone_times), 3),
    }  # fmt: skip


def coefs(path: Path) -> np.ndarray:
    return np.array(pl.read_parquet(path)["coefs"].to_list(), dtype=np.float64)


def agreement(test: np.ndarray, reference: np.ndarray) -> dict:
    """How far ``test`` is from ``reference`` (both ``[P, M]``), next to how much the
    reference's coefficients vary from prompt to prompt (what a prompt changes)."""
    centred = reference - reference.mean(axis=0)
    return {
        "max_abs_diff": float(np.abs(test - reference).max()),
        "rms_diff": float(np.sqrt(((test - reference) ** 2).mean())),
        "rms_prompt_effect": float(np.sqrt((centred**2).mean())),
        "same_top_model": float((test.argmax(1) == reference.argmax(1)).mean()),
    }


def predict_check(model: Path, data: Path, root: Path, device: str, sample: int,
                  dtypes: list[str], log: Path) -> dict:  # fmt: skip
    prompts = data / "val.parquet"
    few = root / "sample.parquet"
    frame = pl.read_parquet(prompts)
    frame.head(sample).write_parquet(few)
    n = len(frame)
    out = {"prompts": n}
    for name in dtypes:
        path = root / f"pred_{device}_{name}.parquet"
        done = run_p2l(["predict", str(model), str(prompts), "-o", str(path), "--device",
                        device, "--dtype", name], log)  # fmt: skip
        out[f"{device}_{name}_prompts_per_s"] = round(n / done.seconds, 1)
    cpu = root / "pred_cpu_float32.parquet"
    run_p2l(["predict", str(model), str(few), "-o", str(cpu), "--device", "cpu", "--dtype",
             "float32"], log)  # fmt: skip
    reference = coefs(cpu)
    for name in dtypes:
        got = coefs(root / f"pred_{device}_{name}.parquet")[:sample]
        out[f"{device}_{name}_vs_cpu_float32"] = agreement(got, reference)
    return out


def long_prompts(data: Path, long: Path, tokens: int, backbone: Path) -> int:
    """A copy of ``data`` whose prompts are repeated to about ``tokens`` tokens (first 64
    training votes, 8 validation votes); returns the median length in tokens."""
    tokenizer = PreTrainedTokenizerFast.from_pretrained(backbone)
    long.mkdir(parents=True, exist_ok=True)
    for name in ("models.json", "prepare.json"):
        shutil.copy(data / name, long / name)
    lengths = []
    for split, rows in (("train", 64), ("val", 8)):
        frame = pl.read_parquet(data / f"{split}.parquet").head(rows)
        grown = []
        for turns in frame["prompt"].to_list():
            text = " ".join(turns)
            repeats = max(1, tokens // max(1, len(tokenizer(text)["input_ids"])))
            grown.append([" ".join([text] * repeats)])
            lengths.append(len(tokenizer(grown[-1][0])["input_ids"]))
        frame.with_columns(pl.Series("prompt", grown)).write_parquet(long / f"{split}.parquet")
    return int(np.median(lengths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for results.json and the runs")
    parser.add_argument("--archs", default="smollm2-135m,qwen2.5-1.5b")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run")
    parser.add_argument("--steps", default="4,2", help="optimizer steps per architecture")
    parser.add_argument("--battles", type=int, default=8000)
    parser.add_argument("--sample", type=int, default=64, help="prompts predicted on the CPU")
    parser.add_argument(
        "--long-tokens",
        type=int,
        default=0,
        help="tokens per prompt of the long run (0: the recipe's max_length)",
    )
    parser.add_argument(
        "--global-batch", type=int, default=512, help="votes per optimizer step (the recipes': 512)"
    )
    parser.add_argument("--dtypes", default="auto,float32", help="GPU predictions' --dtype")
    parser.add_argument("--overhead-steps", type=int, default=4,
                        help="timed optimizer steps of the overhead stage")  # fmt: skip
    parser.add_argument("--skip", default="", help="stages to leave out: overhead,long,resume")
    args = parser.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    log = root / "bench.log"
    results = {
        "machine": {
            "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "cpu": platform.machine(),
        },
        "runs": [],
    }  # fmt: skip

    def save() -> None:  # after each stage, so that a run cut short keeps what it measured
        (root / "results.json").write_text(json.dumps(results, indent=2))

    _, data = simulate_and_prepare(root, "mixed", 0, args.battles, 12, 0.1)
    texts = prompt_texts(data)
    skip = set(filter(None, args.skip.split(",")))
    for arch, steps in zip(args.archs.split(","), map(int, args.steps.split(","))):
        started = time.perf_counter()
        backbone = random_backbone(root / arch / "backbone", arch, texts, args.device)
        run = {"arch": arch, "build_seconds": round(time.perf_counter() - started, 1)}
        first = not results["runs"]
        results["runs"].append(run)
        model = root / arch / "model"
        grad_accum = accumulation(arch, args.global_batch)
        run["train"] = train_run(data, model, backbone, arch, steps, grad_accum, log)
        save()
        if "overhead" not in skip:
            run["overhead"] = step_overhead(data, root / arch / "overhead", backbone, arch,
                                            grad_accum, args.overhead_steps)  # fmt: skip
            save()
        run["predict"] = predict_check(model, data, root / arch, args.device, args.sample,
                                       args.dtypes.split(","), log)  # fmt: skip
        save()
        if "long" not in skip:
            max_length = json.loads((model / "training_config.json").read_text())["max_length"]
            long = root / arch / "long_data"
            tokens = long_prompts(data, long, args.long_tokens or max_length, backbone)
            run["long"] = {
                "median_tokens": tokens,
                **train_run(long, root / arch / "long_model", backbone, arch, 1, 8, log),
            }
            save()
        if "resume" not in skip and first:
            run["resume"] = resume_check(data, root / arch, backbone, arch, steps, grad_accum,
                                         model, log)  # fmt: skip
            save()
        shutil.rmtree(backbone)
        print(json.dumps(run, indent=2), flush=True)


if __name__ == "__main__":
    main()
