"""Quality on prompts the simulator did not write: `bench_quality.py` over `--prompts-from`.

The quality benchmark's prompts come from the simulator's templates, whose categories show in
a few telling words. This script builds a file of real, varied, human-written text that was
not written for the simulator, the docstrings of the Python standard library read with
``ast`` (nothing imported, nothing downloaded), grouped into eight topics by module (GUI,
internet protocols, concurrency, numbers and time, files and formats, developer tools, text,
packaging), and runs `bench_quality.py` on it with ``--simulate-args "--prompts-from FILE"``:
the truth is planted on those topics as categories (each with a speciality of its own), on
turns and on length. To give the form something to act on, as real prompts do, 15% of the
prompts get a second turn (another docstring of the same topic) and 10% a pasted context
(eight to sixteen more docstrings of the same module, which makes most of them long).

Docstrings are not chat prompts: the figures say how the defaults do on text whose topic must
be read from varied wording, not what they do on Arena prompts (not available offline).

    python benchmarks/bench_own_prompts.py --worlds mixed,structure --seeds 0,1,2 --out /tmp/bq-own
    python benchmarks/bench_own_prompts.py --only-file /tmp/stdlib_prompts.parquet
    python benchmarks/bench_own_prompts.py --neighbours /tmp/bq-own/mixed-0 /tmp/bq/mixed-5

``--neighbours`` reads finished `bench_quality.py` runs instead (their cached prompt
encodings): the share of training prompts whose 10 nearest other training prompts, by the
backbone's embedding (cosine), have the prompt's true category as their most common one.
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import numpy as np
import polars as pl

TOPICS = {
    "gui": ("tkinter", "turtle", "turtledemo"),
    "internet": ("email", "mailbox", "smtplib", "imaplib", "poplib", "nntplib", "ftplib",
                 "telnetlib", "http", "urllib", "wsgiref", "xmlrpc", "socketserver", "socket",
                 "ssl", "ipaddress", "mimetypes", "cgi"),
    "concurrency": ("asyncio", "multiprocessing", "threading", "concurrent", "queue",
                    "subprocess", "selectors", "sched", "signal"),
    "numbers and time": ("_pydecimal", "decimal", "fractions", "statistics", "random", "math",
                         "datetime", "calendar", "numbers", "cmath", "time", "zoneinfo",
                         "_strptime"),
    "files and formats": ("tarfile", "zipfile", "shutil", "pathlib", "_pyio", "io", "gzip",
                          "bz2", "lzma", "csv", "configparser", "json", "pickle", "pickletools",
                          "xml", "plistlib", "sqlite3", "dbm", "shelve", "tempfile", "glob",
                          "os", "fileinput", "filecmp", "zipimport", "tomllib"),
    "developer tools": ("unittest", "doctest", "pdb", "bdb", "inspect", "ast", "dis",
                        "symtable", "traceback", "pydoc", "typing", "logging", "profile",
                        "cProfile", "pstats", "trace", "timeit", "warnings", "tokenize"),
    "text": ("difflib", "textwrap", "string", "re", "codecs", "encodings", "unicodedata",
             "html", "gettext", "locale", "optparse", "argparse"),
    "packaging": ("distutils", "importlib", "ensurepip", "venv", "pkgutil", "modulefinder",
                  "sysconfig", "site"),
}  # fmt: skip
MIN_CHARS = 40
SECOND_TURN_SHARE = 0.15
PASTED_SHARE = 0.10


def stdlib_docstrings(root: Path) -> list[tuple[str, str, str]]:
    """``(topic, module, docstring)`` of every module, class and function of the standard
    library below ``root`` whose top-level package has a topic (tests left out), in file
    order."""
    topic_of = {module: topic for topic, modules in TOPICS.items() for module in modules}
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        top = parts[0].removesuffix(".py")
        if top not in topic_of or any(p in ("test", "tests", "idle_test") for p in parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
        for node in ast.walk(tree):
            text = ast.get_docstring(node) if isinstance(node, kinds) else None
            if text and len(text) >= MIN_CHARS:
                found.append((topic_of[top], ".".join(parts).removesuffix(".py"), text))
    return found


def prompt_rows(docstrings: list[tuple[str, str, str]], seed: int = 0) -> pl.DataFrame:
    """One prompt per distinct docstring: its user turns and its topic as the category."""
    rng = np.random.default_rng(seed)
    seen, unique = set(), []
    for row in docstrings:
        if row[2] not in seen:
            seen.add(row[2])
            unique.append(row)
    by_topic: dict[str, list[str]] = {}
    by_module: dict[str, list[str]] = {}
    for topic, module, text in unique:
        by_topic.setdefault(topic, []).append(text)
        by_module.setdefault(module, []).append(text)
    prompts, categories = [], []
    for topic, module, text in unique:
        first = text
        if rng.random() < PASTED_SHARE and len(by_module[module]) > 1:
            others = [t for t in by_module[module] if t != text]
            pasted = rng.choice(others, size=min(len(others), int(rng.integers(8, 17))),
                                replace=False)  # fmt: skip
            first = text + "\n\nHere is the context I have:\n\n" + "\n\n".join(pasted)
        turns = [first]
        if rng.random() < SECOND_TURN_SHARE:
            turns.append(str(rng.choice(by_topic[topic])))
        prompts.append(turns)
        categories.append(topic)
    return pl.DataFrame({"prompt": prompts, "category": categories},
                        schema={"prompt": pl.List(pl.String), "category": pl.String})  # fmt: skip


def describe(frame: pl.DataFrame) -> str:
    chars = np.array([sum(map(len, turns)) for turns in frame["prompt"].to_list()])
    turns = np.array([len(turns) for turns in frame["prompt"].to_list()])
    topics = Counter(frame["category"].to_list())
    return (
        f"{frame.height:,} prompts; characters median {np.median(chars):.0f}, 90th percentile "
        f"{np.percentile(chars, 90):.0f}; long (2,000+ characters) {np.mean(chars >= 2000):.1%}; "
        f"multi-turn {np.mean(turns > 1):.1%}; topics "
        + ", ".join(f"{t} {n:,}" for t, n in topics.most_common())
    )


def neighbour_agreement(run: Path, k: int = 10) -> dict:
    """How well the embedding of a finished run's training prompts tells their category: the
    share whose ``k`` nearest other prompts mostly share it, and the majority category's share."""
    from p2l_cli.stats.headfit import prompt_groups
    from p2l_cli.train import RunOptions, Trainer, make_accelerator
    from p2l_cli.train_config import resolve_config

    config, _, _ = resolve_config(None, {}, use_default_recipe=True)
    trainer = Trainer(config, run / "data", run / "neighbours-scratch", make_accelerator(config),
                      RunOptions())  # fmt: skip
    trainer.setup()
    ids = pl.read_parquet(run / "data" / "train.parquet", columns=["id"])
    truth = pl.read_parquet(run / "arena" / "truth.parquet", columns=["id", "category"])
    categories = ids.join(truth, on="id", how="left", maintain_order="left")["category"]
    _, first = np.unique(prompt_groups(trainer.data.train.prompts), return_index=True)
    names, labels = np.unique(categories.to_numpy()[first], return_inverse=True)
    hidden = trainer.model.config.hidden_size
    x = trainer.features["train"].float().cpu().numpy()[first, :hidden]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argsort(-similarity, axis=1)[:, :k]
    most = np.array([np.bincount(labels[row], minlength=len(names)).argmax() for row in nearest])
    return {"run": str(run), "prompts": len(labels), "agreement": float(np.mean(most == labels)),
            "majority": float(np.bincount(labels).max() / len(labels))}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", default="mixed,structure")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("/tmp/p2l-bench-own-prompts"))
    parser.add_argument("--only-file", type=Path, help="write the prompts file here and stop")
    parser.add_argument("--neighbours", type=Path, nargs="+", metavar="RUN",
                        help="only the neighbour agreement of these finished runs")  # fmt: skip
    args = parser.parse_args()
    if args.neighbours:
        for run in args.neighbours:
            result = neighbour_agreement(run)
            print(f"{run}: {result['prompts']:,} training prompts, the 10 nearest mostly share "
                  f"the category for {result['agreement']:.1%} (majority category "
                  f"{result['majority']:.1%})", flush=True)  # fmt: skip
        return
    root = Path(sysconfig.get_paths()["stdlib"])
    frame = prompt_rows(stdlib_docstrings(root))
    print(f"Python {sys.version.split()[0]} standard library at {root}: {describe(frame)}",
          flush=True)  # fmt: skip
    path = args.only_file or args.out / "stdlib_prompts.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(path)
    if args.only_file:
        return
    bench = Path(__file__).with_name("bench_quality.py")
    subprocess.run([sys.executable, str(bench), "--worlds", args.worlds, "--seeds", args.seeds,
                    "--out", str(args.out), "--simulate-args", f"--prompts-from {path}"],
                   check=True)  # fmt: skip


if __name__ == "__main__":
    main()
