"""`p2l prepare` keeps the style columns: the counting rules, and every source of them
(conv_metadata, the Arena conversations in Parquet and JSONL, the Kaggle responses, a
battles file's own columns). Every expected count is worked out by hand in a comment."""

from __future__ import annotations

import csv
import json

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from conftest import run_cli
from test_prepare import everything, load, prepare, vote, write_jsonl

from p2l_cli.contracts.style import STYLE_COLUMNS
from p2l_cli.data.formats import ANSWER_TEXTS, ARENA_ANSWERS, open_records
from p2l_cli.data.style_counts import answer_style, count_tokens, turns_style

# ------------------------------------------------------------------- counting rules

MARKDOWN = """# Plan

Some **bold** text and __more bold__ here.
## Steps
1. first
2) second
   - nested item
     * deeper item
+ plus item
#no header without a space
####### seven hashes are not a header
-not a list item
**never closed
10.not a list item either

```python
# comment
- item
**not bold in code**
```
Done.
"""


def test_headers_bold_and_lists_of_a_markdown_answer():
    _, headers, bold, lists = answer_style(MARKDOWN)
    assert headers == 2  # "# Plan", "## Steps"
    assert bold == 2  # "**bold**", "__more bold__"
    assert lists == 5  # "1.", "2)", nested "-", deeper "*", "+"


def test_tokens_are_words_and_punctuation_marks():
    # Hello , world ! It ' s 3 . 5 km .
    assert count_tokens("Hello, world! It's 3.5 km.") == 12
    # code counts for tokens: a ` ` ` b ` ` ` c
    assert answer_style("a ```b``` c") == (9, 0, 0, 0)
    assert count_tokens("") == 0


def test_code_fences_hide_markdown_even_when_never_closed():
    assert answer_style("```\n# comment\n- item\n**x**\n```")[1:] == (0, 0, 0)
    # the second fence is never closed: everything after it is code
    text = "# Title\n```\n# a\n```\n- one\n```\n# b\n- two\n"
    assert answer_style(text)[1:] == (1, 0, 1)


def test_bold_spans_stay_on_one_line():
    assert answer_style("**a\nb**")[2] == 0
    assert answer_style("**a** and **b**, __c__")[2] == 3
    assert answer_style("****")[2] == 0  # no text between


def test_turns_style_sums_over_turns():
    # "# A": # A -> 2 tokens, 1 header; "- x\n- y": - x - y -> 4 tokens, 2 list items
    assert turns_style(["# A", "- x\n- y"]) == (6, 1, 0, 2)
    assert turns_style([]) == (0, 0, 0, 0)


# ------------------------------------------------------------------------ the sources


def style_of(battles: pl.DataFrame) -> dict[str, dict[str, float | None]]:
    """The style columns of each battle by id."""
    return {row["id"]: {c: row[c] for c in STYLE_COLUMNS} for row in battles.iter_rows(named=True)}


def counts(tokens, headers, bold, lists) -> dict[str, float]:
    """Expected columns from (a, b) pairs."""
    values = [v for pair in (tokens, headers, bold, lists) for v in pair]
    return dict(zip(STYLE_COLUMNS, map(float, values)))


NO_STYLE = dict.fromkeys(STYLE_COLUMNS)


def message(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def arena_records() -> list[dict]:
    trip = [
        message("user", "Plan a trip"),
        message("assistant", "# Day 1\n- **Louvre**\n- Seine walk"),
        message("user", "Shorter?"),
        message("assistant", "1. Louvre\n2. Seine"),
    ]
    terse = [
        message("user", "Plan a trip"),
        message("assistant", "Go to Paris."),
        message("user", "Shorter?"),
        message("assistant", "Paris."),
    ]
    code = [
        message("user", "Show code"),
        message("assistant", "```\n# not a header\n- not a list\n```\nok"),
    ]
    yes = [message("user", "Show code"), message("assistant", "**Yes**")]
    return [
        {"id": "trip", "model_a": "m1", "model_b": "m2", "winner": "model_a",
         "conversation_a": trip, "conversation_b": terse},
        {"id": "code", "model_a": "m2", "model_b": "m3", "winner": "model_b",
         "conversation_a": code, "conversation_b": yes},
        {"id": "no-b", "model_a": "m3", "model_b": "m1", "winner": "tie",
         "conversation_a": yes, "conversation_b": None},
    ]


ARENA_STYLE = {
    # a: "# Day 1\n- **Louvre**\n- Seine walk" -> # Day 1 - * * Louvre * * - Seine walk = 12
    #    "1. Louvre\n2. Seine" -> 1 . Louvre 2 . Seine = 6; 1 header, 1 bold, 2 + 2 lists
    # b: Go to Paris . = 4, Paris . = 2
    "trip": counts(tokens=(18, 6), headers=(1, 0), bold=(1, 0), lists=(4, 0)),
    # a: ` ` ` # not a header - not a list ` ` ` ok = 15, all markdown inside the fence
    # b: * * Yes * * = 5, one bold span
    "code": counts(tokens=(15, 5), headers=(0, 0), bold=(0, 1), lists=(0, 0)),
    "no-b": NO_STYLE,  # no conversation_b: no style values
}

MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def test_arena_parquet_conversations_give_style_columns(tmp_path):
    schema = pa.schema(
        [("id", pa.string()), ("model_a", pa.string()), ("model_b", pa.string()),
         ("winner", pa.string()), ("conversation_a", MESSAGES), ("conversation_b", MESSAGES)]
    )
    source = tmp_path / "arena.parquet"
    pq.write_table(pa.Table.from_pylist(arena_records(), schema=schema), source)
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    battles = everything(tmp_path / "data")
    assert style_of(battles) == ARENA_STYLE
    prompts = dict(battles.select("id", "prompt").iter_rows())
    assert prompts["trip"] == ["Plan a trip", "Shorter?"]  # user turns only
    assert prompts["code"] == ["Show code"]
    assert set(STYLE_COLUMNS) <= set(load(tmp_path / "data")[3]["columns"])


def test_parquet_reader_hands_over_only_the_turns_text(tmp_path):
    """The Parquet reader takes the answers' text out with polars: the conversations never
    reach Python as message objects."""
    source = tmp_path / "arena.parquet"
    pq.write_table(pa.Table.from_pylist(arena_records()[:1]), source)
    stream = open_records(str(source))
    columns = ["conversation_a", *ARENA_ANSWERS]
    (_, [record]), = stream.batches(
        columns, 10, messages="conversation_a", answers=ARENA_ANSWERS
    )
    assert record == {
        "conversation_a": ["Plan a trip", "Shorter?"],
        ANSWER_TEXTS[0]: ["# Day 1\n- **Louvre**\n- Seine walk", "1. Louvre\n2. Seine"],
        ANSWER_TEXTS[1]: ["Go to Paris.", "Paris."],
    }


def test_arena_jsonl_conversations_count_the_same(tmp_path):
    source = write_jsonl(tmp_path / "arena.jsonl", arena_records())
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    assert style_of(everything(tmp_path / "data")) == ARENA_STYLE


def test_typed_content_parts_count_only_their_text(tmp_path):
    def parts(*texts):
        return [{"type": "text", "text": t} for t in texts] + [
            {"type": "image", "text": "# not text", "image": "x.png"}
        ]

    records = [
        {"id": "p", "model_a": "m1", "model_b": "m2", "winner": "model_a",
         "conversation_a": [{"role": "user", "content": parts("hi")},
                            {"role": "assistant", "content": parts("# A", "- b")}],
         "conversation_b": [{"role": "user", "content": parts("hi")},
                            {"role": "assistant", "content": parts("ok")}]},
    ]
    source = tmp_path / "parts.parquet"
    pq.write_table(pa.Table.from_pylist(records), source)
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    # a: the parts joined by a line: "# A\n- b" -> # A - b = 4, 1 header, 1 list; b: ok = 1
    assert style_of(everything(tmp_path / "data"))["p"] == counts(
        tokens=(4, 1), headers=(1, 0), bold=(0, 0), lists=(1, 0)
    )


def test_conv_metadata_counts_are_summed(tmp_path):
    metadata = {
        "sum_user_tokens": 10,
        "sum_assistant_a_tokens": 120,
        "sum_assistant_b_tokens": 80,
        "header_count_a": {"h1": 2, "h2": 1, "h3": 0},
        "header_count_b": {"h1": 0, "h2": None},
        "bold_count_a": {"**": 3, "__": 1},
        "bold_count_b": 5,
        "list_count_a": {"ordered": 4, "unordered": 2},
        "list_count_b": None,
    }
    records = arena_records()
    records[0]["conv_metadata"] = metadata  # wins over the conversations
    records[1]["conv_metadata"] = {"sum_assistant_a_tokens": 7}  # no b tokens: none
    records[2]["conv_metadata"] = json.dumps(metadata)  # JSON text is read too
    source = write_jsonl(tmp_path / "arena140k.jsonl", records)
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    # headers 2+1+0 and 0+0, bold 3+1 and 5, lists 4+2 and 0
    expected = counts(tokens=(120, 80), headers=(3, 0), bold=(4, 5), lists=(6, 0))
    assert style_of(everything(tmp_path / "data")) == {
        "trip": expected, "code": NO_STYLE, "no-b": expected,
    }


def test_conv_metadata_parquet_struct(tmp_path):
    records = arena_records()[:2]
    for record, tokens in zip(records, (30, 40)):
        record["conv_metadata"] = {
            "sum_assistant_a_tokens": tokens, "sum_assistant_b_tokens": 10,
            "header_count_a": {"h1": 1, "h2": 1}, "header_count_b": {"h1": 0, "h2": 0},
            "bold_count_a": {"**": 0, "__": 0}, "bold_count_b": {"**": 2, "__": 0},
            "list_count_a": {"ordered": 0, "unordered": 3},
            "list_count_b": {"ordered": 1, "unordered": 0},
        }
    source = tmp_path / "arena140k.parquet"
    pq.write_table(pa.Table.from_pylist(records), source)
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    styles = style_of(everything(tmp_path / "data"))
    assert styles["trip"] == counts(tokens=(30, 10), headers=(2, 0), bold=(0, 2), lists=(3, 1))
    assert styles["code"]["sum_assistant_tokens_a"] == 40


def test_bad_conv_metadata_names_file_and_line(tmp_path):
    records = arena_records()
    records[1]["conv_metadata"] = {"sum_assistant_a_tokens": 3, "sum_assistant_b_tokens": "many"}
    source = write_jsonl(tmp_path / "arena.jsonl", records)
    result = run_cli("prepare", source, "-o", tmp_path / "data")
    assert result.exit_code == 2
    assert (
        "arena.jsonl: line 2: conv_metadata sum_assistant_b_tokens 'many' is not a number"
        in result.output
    )


def test_kaggle_csv_responses(tmp_path):
    source = tmp_path / "train.csv"
    header = ["id", "model_a", "model_b", "prompt", "response_a", "response_b",
              "winner_model_a", "winner_model_b", "winner_tie"]
    rows = [
        ["1", "m1", "m2", json.dumps([None, "Say hi"]),
         json.dumps([None, "## Hi\n* one\n* two"]), json.dumps(["Plain answer.", "**Sure**"]),
         "1", "0", "0"],
        ["2", "m2", "m3", json.dumps(["Again"]), json.dumps(["Ok"]), "", "0", "0", "1"],
    ]
    with source.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([header, *rows])
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    styles = style_of(everything(tmp_path / "data"))
    # a: # # Hi * one * two = 7, 1 header, 2 list items (the null turn skipped)
    # b: Plain answer . = 3, * * Sure * * = 5; 1 bold span
    assert styles["1"] == counts(tokens=(7, 8), headers=(1, 0), bold=(0, 1), lists=(2, 0))
    assert styles["2"] == NO_STYLE  # response_b is empty


def test_no_answers_no_style_columns(tmp_path):
    source = write_jsonl(
        tmp_path / "votes.jsonl",
        [vote("q1", "a", "b", "model_a"), vote("q2", "b", "c", "model_b")],
    )
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    train, val, _, report = load(tmp_path / "data")
    assert not set(STYLE_COLUMNS) & set(train.columns)
    assert not set(STYLE_COLUMNS) & set(val.columns)
    assert not set(STYLE_COLUMNS) & set(report["columns"])


def test_battles_file_style_columns_are_copied(tmp_path):
    source = tmp_path / "arena.parquet"
    pq.write_table(pa.Table.from_pylist(arena_records()), source)
    prepare(source, "-o", tmp_path / "first", "--val-fraction", "0")
    prepare(tmp_path / "first" / "train.parquet", "-o", tmp_path / "again", "--val-fraction", "0")
    assert style_of(everything(tmp_path / "again")) == ARENA_STYLE

    partial = write_jsonl(
        tmp_path / "partial.jsonl",
        [
            vote("q1", "a", "b", "model_a", id="1", sum_assistant_tokens_a=10,
                 sum_assistant_tokens_b=4),
            vote("q2", "b", "c", "model_b", id="2"),
        ],
    )
    prepare(partial, "-o", tmp_path / "partial", "--val-fraction", "0")
    battles = everything(tmp_path / "partial")
    present = [c for c in STYLE_COLUMNS if c in battles.columns]
    assert present == ["sum_assistant_tokens_a", "sum_assistant_tokens_b"]
    assert battles.select(present).rows() == [(10.0, 4.0), (None, None)]


def test_bad_copied_style_value_names_file_and_line(tmp_path):
    source = write_jsonl(
        tmp_path / "votes.jsonl",
        [
            vote("q1", "a", "b", "model_a", bold_count_a=1, bold_count_b=0),
            vote("q2", "b", "c", "model_b", bold_count_a=-2, bold_count_b=0),
        ],
    )
    result = run_cli("prepare", source, "-o", tmp_path / "data")
    assert result.exit_code == 2
    assert "votes.jsonl: line 2: bold_count_a -2 must be a finite number >= 0" in result.output
