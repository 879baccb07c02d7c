"""How long `p2l push` takes on a model folder of a realistic shape, against a local fake Hub.

Builds a folder with a WEIGHTS_MB safetensors file, a tokenizer.json of TOKENIZER_MB (the
secret scan reads it), MODELS model names with a leaderboard, a .env and a checkpoint; then
times (1) preparing the upload in-process (file choice, secret scan, card, plot) and (2) the
whole CLI run (`python -m p2l_cli push`) against tests/fake_hub.py on 127.0.0.1 with the
real huggingface_hub client (LFS basic transfer; Xet disabled). Prints wall times, the
upload rate and the CLI process's peak memory.

    .venv/bin/python benchmarks/bench_push.py --weights-mb 512
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
# Runs the CLI from a small parent so that the child's peak RSS is the CLI's own (a child forked
# from this process would count the memory it inherited before exec).
MEASURE = ("import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)")
sys.path.insert(0, str(REPO / "tests"))

from fake_hub import FakeHub

from p2l_cli import hub


def build_folder(folder: Path, weights_mb: int, tokenizer_mb: int, num_models: int) -> None:
    rng = np.random.default_rng(0)
    models = [f"vendor-{i:03d}/model-{i:03d}-chat" for i in range(num_models)]
    hidden = 1024
    rows = max(1, weights_mb * 2**20 // (4 * hidden))
    save_file({"model.layers.weight": rng.standard_normal((rows, hidden), dtype=np.float32),
               "head.head.weight": rng.standard_normal((num_models, hidden), dtype=np.float32),
               "head.head.bias": np.zeros(num_models, dtype=np.float32)},
              str(folder / "model.safetensors"))  # fmt: skip
    vocab = {f"tok{i}_{'x' * 20}": i for i in range(tokenizer_mb * 2**20 // 34)}
    (folder / "tokenizer.json").write_text(json.dumps({"model": {"vocab": vocab}}))
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    (folder / "model_list.json").write_text(json.dumps(models))
    (folder / "training_config.json").write_text(json.dumps({
        "backbone": "Qwen/Qwen2.5-1.5B-Instruct", "model_type": "qwen2", "head_type": "rk",
        "loss_type": "grk", "max_length": 8192, "learning_rate": 8e-6}))  # fmt: skip
    theta = np.sort(rng.standard_normal(num_models))[::-1]
    (folder / "leaderboard.json").write_text(json.dumps({"family": "grk", "rows": [
        {"rank": i + 1, "model": m, "theta": float(t), "score": float(1000 + 173.7 * t)}
        for i, (m, t) in enumerate(zip(models, theta, strict=True))]}))  # fmt: skip
    (folder / ".env").write_text("HF_TOKEN=hf_" + "x" * 34 + "\n")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "optimizer.pt").write_bytes(b"\0" * 2**20)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--weights-mb", type=int, default=256)
    parser.add_argument("--tokenizer-mb", type=int, default=8)
    parser.add_argument("--models", type=int, default=130)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        folder.mkdir()
        build_folder(folder, args.weights_mb, args.tokenizer_mb, args.models)

        start = time.perf_counter()
        upload = hub.build_model_upload(folder, "alice/p2l-bench")
        prepare_s = time.perf_counter() - start
        size_mb = upload.total_size / 2**20

        fake = FakeHub().start()
        env = {**os.environ, "HF_ENDPOINT": fake.url, "HF_TOKEN": fake.token,
               "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1",
               "HF_HOME": str(Path(tmp) / "hf-home")}  # fmt: skip
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", MEASURE, sys.executable, "-m", "p2l_cli",
                               "-q", "push", str(folder), "--repo-id", "alice/p2l-bench"],
                              env=env, capture_output=True, check=False)  # fmt: skip
        push_s = time.perf_counter() - start
        fake.stop()
        if proc.returncode != 0:
            raise SystemExit(proc.stderr.decode())
        [commit] = fake.repo("alice/p2l-bench").commits
        assert commit.files["model.safetensors"] == (folder / "model.safetensors").read_bytes()
        peak_mb = int(proc.stdout.split()[-1]) / 1024

    print(f"files uploaded: {len(upload.files)} ({size_mb:.1f} MiB), left out: "
          f"{len(upload.skipped)}; {args.models} models")
    print(f"prepare (select + secret scan + card + plot): {prepare_s:.2f} s")
    print(f"p2l push end to end (CLI process, local fake Hub): {push_s:.2f} s "
          f"= {size_mb / push_s:.0f} MiB/s; CLI peak RSS {peak_mb:.0f} MiB")


if __name__ == "__main__":
    main()
