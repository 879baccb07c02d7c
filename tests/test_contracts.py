"""The shared file contracts (battles, prompts, predictions), tested once on shared
fixtures: every command's reader accepts the same spellings and raises the same errors."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from p2l_cli import evaluate, leaderboard
from p2l_cli.contracts.battles import WINNER_SPELLINGS
from p2l_cli.contracts.costs import read_costs, read_weights
from p2l_cli.contracts.predictions import predictions_from_frame
from p2l_cli.contracts.prompts import BadPrompt, prompt_turns, user_turns
from p2l_cli.data.formats import Columns, RecordParser
from p2l_cli.errors import UserError

# ------------------------------------------------------------------------------ battles

# every spelling once, then the winning model's name, each vote between "x" and "y"
SPELLINGS = [*WINNER_SPELLINGS, "x", "y", " Model_B ", "TIE"]
# what each row means, written out by hand: (winner, loser, tie code)
X, Y = 0, 1
EXPECTED = {
    "model_a": (X, Y, 0), "a": (X, Y, 0), "model_b": (Y, X, 0), "b": (Y, X, 0),
    "tie": (X, Y, 1), "draw": (X, Y, 1), "tie (bothbad)": (X, Y, 2), "tie(bothbad)": (X, Y, 2),
    "tie (both bad)": (X, Y, 2), "tie_bothbad": (X, Y, 2), "both_bad": (X, Y, 2),
    "bothbad": (X, Y, 2), "both bad": (X, Y, 2), "x": (X, Y, 0), "y": (Y, X, 0),
    " Model_B ": (Y, X, 0), "TIE": (X, Y, 1),
}


def battles_frame(winners: list[str]) -> pl.DataFrame:
    n = len(winners)
    return pl.DataFrame({"model_a": ["x"] * n, "model_b": ["y"] * n, "winner": winners})


def test_the_spelling_table_is_covered_by_hand():
    assert set(EXPECTED) == set(SPELLINGS)


def test_every_reader_reads_every_winner_spelling_alike():
    frame = battles_frame(SPELLINGS)
    expected = np.array([EXPECTED[s] for s in SPELLINGS])

    battles = leaderboard.battles_from_frame(frame, "b.csv")
    assert battles.models == ["x", "y"]
    got = np.stack([battles.winner, battles.loser, battles.tie_code], axis=1)
    np.testing.assert_array_equal(got, expected)

    np.testing.assert_array_equal(evaluate.vote_labels(frame, ["x", "y"], "b.csv"), expected)

    parse = RecordParser("generic", Columns(prompt="prompt"), text_fields=False)
    outcome = {"model_a": 0, "model_b": 0, "tie": 1, "tie (bothbad)": 2}
    for spelling, (winner, _, code) in zip(SPELLINGS, expected):
        battle = parse({"prompt": "hi", "model_a": "x", "model_b": "y", "winner": spelling})
        assert outcome[battle.winner] == code
        assert battle.winner != "model_b" or winner == Y


@pytest.mark.parametrize("bad", ["model_c", "", None, "x wins"])
def test_readers_reject_an_unknown_winner_with_one_message(bad):
    frame = battles_frame(["model_a", bad])
    messages = []
    for read in (lambda: leaderboard.battles_from_frame(frame, "b.csv"),
                 lambda: evaluate.vote_labels(frame, ["x", "y"], "b.csv")):
        with pytest.raises(UserError) as caught:
            read()
        messages.append(str(caught.value))
    assert messages[0] == messages[1]
    assert messages[0].startswith("b.csv: row 2: winner ")
    parse = RecordParser("generic", Columns(prompt="prompt"), text_fields=False)
    assert parse({"prompt": "hi", "model_a": "x", "model_b": "y", "winner": bad}) == (
        "unknown_winner"
    )


def test_the_cli_reads_draw_and_a_model_name(tmp_path):
    from tests.conftest import run_cli

    path = tmp_path / "b.csv"
    path.write_text("model_a,model_b,winner\nx,y,draw\nx,y,y\nx,y,a\nx,y,b\n")
    result = run_cli("leaderboard", path, "--ci", "none", "-o", tmp_path / "lb.json")
    assert result.exit_code == 0, result.output


# ------------------------------------------------------------------------------ prompts


CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "an answer"},
    {"role": "user", "content": [{"type": "text", "text": "second"},
                                 {"type": "image_url", "image_url": {"url": "x"}}]},
]


@pytest.mark.parametrize(("value", "turns"), [
    ("hello", ["hello"]),
    (["first", "second"], ["first", "second"]),
    (["first", None, "  ", "second"], ["first", "second"]),
    (CHAT, ["first", "second"]),
    ({"messages": CHAT}, ["first", "second"]),
    ({"role": "user", "content": "alone"}, ["alone"]),
    ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}], ["hi"]),
    (np.array(["a", "b"], dtype=object), ["a", "b"]),
    ('["first", "second"]', ["first", "second"]),  # CSV files hold lists as JSON text
    (json.dumps(CHAT[:2]), ["first"]),
    ("[1, 2] is a list", ["[1, 2] is a list"]),
    ("[1, 2]", ["[1, 2]"]),
    ("\ud83d lone surrogate", ["\ufffd lone surrogate"]),
])
def test_prompt_shapes(value, turns):
    assert prompt_turns(value) == turns
    assert user_turns(value) == turns


@pytest.mark.parametrize("value", [None, "", "   ", [], ["", " "],
                                   [{"role": "assistant", "content": "x"}]])
def test_a_prompt_without_user_text_is_empty(value):
    assert user_turns(value) == []
    with pytest.raises(BadPrompt):
        prompt_turns(value)


@pytest.mark.parametrize(("value", "message"), [
    (3.5, "not float"),
    (["text", {"role": "user", "content": "x"}], "only strings or only messages"),
    ([{"content": "x"}], "message 0 has no 'role'"),
    ([{"role": "user", "content": 3}], "message 0 content must be text"),
])
def test_a_malformed_prompt_is_an_error_everywhere(value, message):
    with pytest.raises(BadPrompt, match=message):
        user_turns(value)
    parse = RecordParser("generic", Columns(prompt="prompt"), text_fields=False)
    with pytest.raises(Exception, match=f"prompt: .*{message}"):
        parse({"prompt": value, "model_a": "x", "model_b": "y", "winner": "a"})


def test_prepare_and_predict_read_sharegpt_alike():
    sharegpt = [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]
    parse = RecordParser("generic", Columns(prompt="prompt"), text_fields=False)
    battle = parse({"prompt": sharegpt, "model_a": "x", "model_b": "y", "winner": "a"})
    assert battle.prompt == prompt_turns(sharegpt) == ["hi"]


# --------------------------------------------------------------------------- predictions

META = {"models": ["a", "b"], "head": "bt", "loss": "bt"}
COEFS = pl.DataFrame({"coefs": [[0.1, 0.2], [0.3, 0.4]], "eta": [0.5, 0.6]})


@pytest.mark.parametrize(("meta", "family"), [
    ({"models": ["a", "b"], "head": "rk"}, "rk"),  # no loss: the head's family
    ({"models": ["a", "b"], "head": "bt"}, "bt"),
    ({"models": ["a", "b"]}, "bt"),
    ({"models": ["a", "b"], "head": "rk", "loss": "bag"}, "grk"),
    ({"models": ["a", "b"], "head": "bt", "loss": "bt-tie"}, "bt-tie"),
])
def test_every_command_reads_the_same_family_from_metadata(tmp_path, meta, family):
    preds = predictions_from_frame(COEFS, meta, "p.parquet")
    assert preds.family == family
    np.testing.assert_allclose(preds.coefs, [[0.1, 0.2], [0.3, 0.4]], rtol=1e-6)
    assert (preds.eta is not None) == (family in ("rk", "grk"))
    # leaderboard and evaluate read the file through the same contract
    from p2l_cli.io import write_table

    path = tmp_path / "p.parquet"
    write_table(COEFS, path, meta=meta)
    assert leaderboard.load_input(str(path)).family == family
    assert evaluate.read_predictions(path).family == family


@pytest.mark.parametrize(("frame", "meta", "message"), [
    (COEFS, None, "p.parquet: no p2l metadata"),
    (COEFS, {"models": []}, "no p2l metadata"),
    (COEFS, {**META, "loss": "nonsense"}, "p.parquet: p2l metadata: unknown likelihood family"),
    (COEFS.clear(), META, "p.parquet: no rows"),
    (pl.DataFrame({"x": [1]}), META, "no 'coefs' column"),
    (pl.DataFrame({"coefs": [[0.1, 0.2], [0.3]]}), META, "row 2: 'coefs' has 1 values for 2"),
    (pl.DataFrame({"coefs": [[0.1, 0.2], [0.3, float("nan")]]}), META, "row 2: 'coefs' holds"),
    (COEFS.drop("eta"), {**META, "loss": "rk"}, "the rk family needs an 'eta' column"),
    (COEFS.with_columns(eta=pl.Series([0.5, None])), {**META, "loss": "grk"}, "row 2: 'eta'"),
])
def test_bad_predictions_give_one_error(frame, meta, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        predictions_from_frame(frame, meta, "p.parquet")


def test_the_commands_report_a_bad_predictions_file_alike(tmp_path):
    from tests.conftest import run_cli

    path = tmp_path / "p.parquet"
    pl.DataFrame({"coefs": [[0.1, 0.2], [0.3]]}).write_parquet(path)
    lines = set()
    for args in (["leaderboard", path], ["route", path], ["evaluate", path, path]):
        result = run_cli(*args)
        assert result.exit_code == 2, result.output
        lines.add(result.output.strip().splitlines()[-1])
    assert len(lines) == 1 and "no p2l metadata" in lines.pop()


# --------------------------------------------------------------------------------- costs


def test_costs_in_three_forms_and_three_formats(tmp_path):
    yaml_file = tmp_path / "costs.yaml"
    yaml_file.write_text(
        "big: 0.01\nmid: {cost: 0.004}\n"
        "small:\n  price_per_million_output_tokens: 2.5\n  mean_output_tokens: 400\n"
    )
    expected = {"big": 0.01, "mid": 0.004, "small": 2.5 * 400 / 1e6}
    assert read_costs(yaml_file) == pytest.approx(expected)
    json_file = tmp_path / "costs.json"
    json_file.write_text(json.dumps({"big": 0.01, "mid": {"cost": 0.004}, "small": {
        "price_per_million_output_tokens": 2.5, "mean_output_tokens": 400}}))  # fmt: skip
    assert read_costs(json_file) == pytest.approx(expected)
    csv_file = tmp_path / "costs.csv"
    csv_file.write_text(
        "model,cost,price_per_million_output_tokens,mean_output_tokens\n"
        "big,0.01,,\nmid,0.004,,\nsmall,,2.5,400\n"
    )
    assert read_costs(csv_file) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "suffix", "needle"),
    [
        ("big: -0.01\n", ".yaml", "'big'"),
        ("big: cheap\n", ".yaml", "not a number"),
        ("big: true\n", ".yaml", "not a number"),
        ("big: .nan\n", ".yaml", "not a finite"),
        ('{"big": {"price_per_million_output_tokens": 3}}', ".json", "mean_output_tokens"),
        ("model,cost\nbig,0.01\nsmall,abc\n", ".csv", "row 3"),
        ("model,cost\nbig,0.01\nbig,0.02\n", ".csv", "twice"),
        ("[1, 2]", ".json", "mapping"),
    ],
)
def test_bad_costs_name_the_model_and_file(tmp_path, text, suffix, needle):
    path = tmp_path / f"costs{suffix}"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_costs(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("text", "suffix", "key"),
    [
        ("big: 0.01\nsmall: 0.001\nbig: 0.02\n", ".yaml", "'big'"),
        ("big:\n  cost: 0.01\n  cost: 0.02\n", ".yml", "'cost'"),
        ('{"big": 0.01, "small": 0.001, "big": 0.02}', ".json", "'big'"),
        ('{"big": {"cost": 0.01, "cost": 0.02}}', ".json", "'cost'"),
    ],
)
def test_duplicate_keys_in_yaml_and_json_costs_are_refused(tmp_path, text, suffix, key):
    """Like CSV: a model given twice is an error, not 'the last one wins'."""
    path = tmp_path / f"costs{suffix}"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        read_costs(path)
    assert str(path) in str(err.value) and key in str(err.value)
    assert "twice" in str(err.value)
    if suffix == ".yaml":
        assert "line 3" in str(err.value)
    with pytest.raises(UserError, match="twice"):
        read_weights(path)


# ---------------------------------------------------------------------------------- stdin

VOTES = pl.DataFrame({"prompt": ["hi", "yo"], "model_a": ["x", "x"], "model_b": ["y", "y"],
                      "winner": ["a", "b"]})


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "csv", "json"])
def test_every_table_reader_tells_stdin_alike(tmp_path, monkeypatch, fmt):
    import io as stdlib_io
    import sys
    import types

    from p2l_cli import io
    from p2l_cli.data.formats import open_records
    from p2l_cli.predict import read_chunks

    path = tmp_path / f"votes.{fmt}"
    io.write_table(VOTES, path, fmt)
    data = path.read_bytes()

    def stdin():
        monkeypatch.setattr(sys, "stdin", types.SimpleNamespace(buffer=stdlib_io.BytesIO(data)))

    stdin()
    assert io.read_table_meta("-")[0].to_dicts() == VOTES.to_dicts()
    stdin()
    chunks = [raw.parse("<stdin>").frame for raw in read_chunks("-").chunks]
    assert pl.concat(chunks).to_dicts() == VOTES.to_dicts()
    stdin()
    records = [r for _, batch in open_records("-").batches(None, 10) for r in batch]
    assert records == VOTES.to_dicts()
