"""`p2l simulate --prompts-from`: an arena with a planted truth over a file of your own prompts."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import polars as pl
import pytest
from conftest import run_cli, run_p2l

from p2l_cli.data.simulate import read_prompt_pool, simulate_arena

CATEGORIES = ("math", "poetry", "Legal Advice")  # one the built-in bank knows, two it does not


def own_prompts(count: int = 50) -> pl.DataFrame:
    """Distinct prompts in three categories: some multi-turn, some long, some German, and one
    category ("Legal Advice") with a space in its name."""
    rows = []
    for i in range(count):
        category = CATEGORIES[i % 3]
        text = f"Prompt {i} about {category.lower()}: what would you do here?"
        if i % 9 == 4:
            text += " Here is the document. " + "The clause says this and that. " * 70
        turns = [text, f"And a follow-up to prompt {i}?"] if i % 7 == 3 else [text]
        rows.append({"prompt": turns, "category": category,
                     "language": "German" if i % 5 == 1 else ("English" if i % 2 else None)})  # fmt: skip
    return pl.DataFrame(rows, schema={"prompt": pl.List(pl.String), "category": pl.String,
                                      "language": pl.String})  # fmt: skip


def user_turns(conversation) -> tuple[str, ...]:
    return tuple(m["content"] for m in conversation if m["role"] == "user")


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "mine.parquet"
    own_prompts().write_parquet(path)
    return path


def test_each_prompt_is_used_once_before_any_is_used_again_and_fresh_ones_stay_out(
    prompts_file,
):
    pool = read_prompt_pool(prompts_file)
    arena = simulate_arena(num_battles=120, num_models=6, seed=2, num_prompts=5, pool=pool)
    by_turns = {tuple(t): i for i, t in enumerate(pool.turns)}
    fresh = [tuple(p) for p in arena.prompts["prompt"].to_list()]
    assert len(fresh) == 5 and all(turns in by_turns for turns in fresh)
    used = Counter(user_turns(c) for c in arena.battles["conversation_a"].to_list())
    assert all(turns in by_turns for turns in used)  # only the file's prompts
    assert not set(fresh) & set(used)  # held out of every battle
    assert len(used) == 50 - 5  # every other prompt is used ...
    assert set(used.values()) <= {120 // 45, 120 // 45 + 1}  # ... as evenly as possible
    # each battle carries its prompt's category and language (null where the file has none)
    for row in arena.battles.select("conversation_a", "category", "language").iter_rows():
        index = by_turns[user_turns(row[0])]
        assert row[1] == pool.category[index] and row[2] == pool.language[index]
    # at most a fifth of the distinct prompts are held out, whatever --prompts asks
    asked_for_more = simulate_arena(num_battles=30, num_models=3, num_prompts=300, pool=pool)
    assert asked_for_more.prompts.height == 10


def test_truth_is_planted_on_the_files_categories_turns_length_and_language(prompts_file):
    pool = read_prompt_pool(prompts_file)
    arena = simulate_arena(num_battles=400, num_models=10, seed=5, num_prompts=6, pool=pool)
    world = arena.world
    assert world.categories == sorted(CATEGORIES)
    # the truth written out by hand from the world's parts and the file's own rows
    conversations = arena.battles["conversation_a"].to_list()
    rows = [{tuple(t): i for i, t in enumerate(pool.turns)}[user_turns(c)] for c in conversations]
    category = np.array([world.categories.index(pool.category[i]) for i in rows])
    form = np.array([[len(pool.turns[i]) > 1, sum(map(len, pool.turns[i])) >= 2000,
                      (pool.language[i] or "English") != "English"] for i in rows], float)  # fmt: skip
    assert form[:, 0].any() and form[:, 1].any() and form[:, 2].any()
    raw = world.general[None, :] + world.skills[:, category].T + form @ world.form_gains
    expected = raw - raw.mean(axis=1, keepdims=True)
    truth = np.array(arena.truth["true_coefs"].to_list())
    np.testing.assert_allclose(truth, expected, atol=1e-12)
    assert arena.truth["long"].to_list() == form[:, 1].astype(bool).tolist()
    # the categories the bank does not know get a specialist each, strongest in its category
    special = {s: i for i, s in enumerate(world.speciality) if s}
    assert {"poetry", "legal-advice"} <= set(special)
    for name, category_name in (("poetry", "poetry"), ("legal-advice", "Legal Advice")):
        skills = world.skills[special[name]]
        own = world.categories.index(category_name)
        assert skills[own] == skills.max() and name in world.models[special[name]]


def test_an_arena_over_a_prompts_file_goes_through_prepare(tmp_path, prompts_file):
    """Real subprocesses: the arena over the file's prompts is ready for `p2l prepare`."""
    arena, data = tmp_path / "arena", tmp_path / "data"
    made = run_p2l("simulate", arena, "--prompts-from", prompts_file, "--battles", "300",
                   "--models", "4", "--prompts", "4", "--seed", "1", check=True)  # fmt: skip
    said = " ".join(made.stderr.decode().split())  # rich wraps long lines
    assert "300 battles" in said
    assert "46 distinct in the battles, 4 held out as fresh prompts" in said
    summary = json.loads((arena / "simulation.json").read_text())
    assert summary["prompts_from"] == str(prompts_file) and summary["prompts"] == 4
    assert summary["categories"] == sorted(CATEGORIES) and summary["battle_prompts"] == 46
    run_p2l("prepare", arena / "battles.parquet", "-o", data, check=True)
    split = pl.concat([pl.read_parquet(data / f"{s}.parquet") for s in ("train", "val")])
    assert split.height == 300
    file_prompts = {tuple(p) for p in own_prompts()["prompt"].to_list()}
    assert {tuple(p) for p in split["prompt"].to_list()} <= file_prompts
    fresh = pl.read_ndjson(arena / "prompts.jsonl")
    assert fresh.height == 4 and fresh.schema["prompt"] == pl.List(pl.String)


def test_bad_prompt_files_and_options_are_usage_errors(tmp_path, prompts_file):
    out = tmp_path / "out"
    result = run_cli("simulate", out, "--prompts-from", prompts_file, "--categories", "math")
    assert result.exit_code == 2 and "--categories and --prompts-from" in result.output
    result = run_cli("simulate", out, "--prompts-from", tmp_path / "missing.jsonl")
    assert result.exit_code == 2 and "missing.jsonl" in result.output
    result = run_cli("simulate", out, "--prompt-column", "q")
    assert result.exit_code == 2 and "--prompt-column" in result.output
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"prompt": "   "}\n')
    result = run_cli("simulate", out, "--prompts-from", bad)
    assert result.exit_code == 2 and "bad.jsonl: row 2" in result.output
    other = tmp_path / "other.jsonl"
    other.write_text('{"q": "one"}\n{"q": "one"}\n')
    result = run_cli("simulate", out, "--prompts-from", other)
    assert result.exit_code == 2 and "--prompt-column" in result.output  # no prompt column
    result = run_cli("simulate", out, "--prompts-from", other, "--prompt-column", "q")
    assert result.exit_code == 2 and "at least 2 distinct prompts" in result.output
    assert not (out / "battles.parquet").exists()
