"""`p2l prepare`: every input schema, every drop reason, the splits, bad rows, streaming.

Fixtures in tests/fixtures are written in the published layouts (the Kaggle 55k CSV, the
chatbot_arena_conversations / arena-100k JSON records, the arena-140k records with typed
content parts); Parquet inputs are built from them here. Expected labels are written out
by hand from the sorted model names, not computed by the code under test.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import run_cli, run_p2l

FIXTURES = Path(__file__).parent / "fixtures"


def prepare(*args, input=None):
    result = run_cli("prepare", *args, input=input)
    assert result.exit_code == 0, result.output
    return result


def load(out: Path) -> tuple[pl.DataFrame, pl.DataFrame, list[str], dict]:
    return (
        pl.read_parquet(out / "train.parquet"),
        pl.read_parquet(out / "val.parquet"),
        json.loads((out / "models.json").read_text()),
        json.loads((out / "prepare.json").read_text()),
    )


def everything(out: Path) -> pl.DataFrame:
    train, val, _, _ = load(out)
    return pl.concat([train, val]).sort("id")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return path


def vote(prompt, a, b, winner, **extra) -> dict:
    return {"prompt": prompt, "model_a": a, "model_b": b, "winner": winner, **extra}


# ----------------------------------------------------------------------- input schemas


def test_arena_100k_parquet_schema(tmp_path):
    """The arena-human-preference-100k layout as Parquet: nested conversation structs."""
    records = [
        json.loads(line)
        for line in (FIXTURES / "arena_conversations_sample.jsonl").read_text().splitlines()
    ]
    for r in records:  # the 100k release has these instead of the moderation tags
        r.pop("openai_moderation"), r.pop("toxic_chat_tag")
        r["is_code"], r["dedup_tag"] = False, {"high_freq": False, "sampled": True}
    source = tmp_path / "arena-explorer-preference-100k.parquet"
    pq.write_table(pa.Table.from_pylist(records), source)
    assert pq.read_schema(source).field("conversation_a").type == pa.list_(
        pa.struct([("content", pa.string()), ("role", pa.string())])
    )
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    battles = everything(tmp_path / "data")
    _, _, models, report = load(tmp_path / "data")
    assert models == ["alpaca-13b", "chatglm-6b", "koala-13b", "oasst-pythia-12b", "vicuna-13b"]
    assert report["inputs"][0]["format"] == "arena"
    rows = {r["id"]: r for r in battles.iter_rows(named=True)}
    assert set(rows) == {r["question_id"] for r in records}
    two_turns = rows["90bfd142157948aba01931726c888e7f"]
    assert two_turns["prompt"] == ["Fuji vs. Nikon, which is better?", "Which one for landscapes?"]
    # labels: indices into the sorted list above
    assert rows["58210e39b3fd4441a2bd4a518bb44c2d"]["labels"] == [2, 1, 0]  # koala beat chatglm
    assert rows["2564acd09e3942fd97657d05282d4389"]["labels"] == [3, 0, 1]  # tie: a then b
    assert two_turns["labels"] == [2, 3, 0]  # koala (a) beat oasst
    assert rows["a7c5accc53e649a3bc6b2e41d962ebc4"]["labels"] == [4, 3, 2]  # both bad
    assert rows["adf27e819a3c494cb6e993f0c660e097"]["language"] == "Russian"
    assert rows["58210e39b3fd4441a2bd4a518bb44c2d"]["tstamp"] == pytest.approx(1682351591.1322)


@pytest.mark.parametrize("slash", ["", "/"])
def test_the_closing_line_names_the_folder_with_one_slash(tmp_path, slash):
    source = FIXTURES / "arena_conversations_sample.jsonl"
    result = prepare(source, "-o", f"{tmp_path / 'data'}{slash}", "--val-fraction", "0")
    assert f"wrote {tmp_path / 'data'}/: train.parquet" in " ".join(result.stderr.split())


def test_arena_jsonl_fixture_with_anony_only(tmp_path):
    source = FIXTURES / "arena_conversations_sample.jsonl"
    prepare(source, "-o", tmp_path / "data", "--anony-only", "--val-fraction", "0")
    battles = everything(tmp_path / "data")
    report = load(tmp_path / "data")[3]
    assert battles.height == 4
    assert report["drops"]["not_anonymous"] == 1
    assert "adf27e819a3c494cb6e993f0c660e097" not in battles["id"].to_list()
    assert report["winners"] == {"model_a": 1, "model_b": 1, "tie": 1, "tie (bothbad)": 1}


def test_arena_140k_parquet_with_content_parts(tmp_path):
    """The arena-140k layout: typed content parts, a ``both_bad`` winner, datetimes."""
    records = [
        json.loads(line) for line in (FIXTURES / "arena_140k_sample.jsonl").read_text().splitlines()
    ]
    for r in records:
        r["timestamp"] = datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00"))
    source = tmp_path / "train-00000-of-00007.parquet"
    pq.write_table(pa.Table.from_pylist(records), source)
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    battles = everything(tmp_path / "data")
    models = load(tmp_path / "data")[2]
    assert models == ["claude-3-7-sonnet-20250219", "gemini-2.5-pro", "o3-2025-04-16"]
    rows = {r["id"]: r for r in battles.iter_rows(named=True)}
    both_bad = rows["0df47d30-5246-42a0-ae3a-0a77b1f7973f"]
    assert both_bad["prompt"] == [
        "Prove Fermat's last theorem in one line.",
        "Then just sketch it.",
    ]
    assert both_bad["winner"] == "tie (bothbad)"
    assert both_bad["labels"] == [2, 1, 2]
    assert both_bad["tstamp"] == pytest.approx(
        datetime(2025, 5, 11, 8, 30, 15, 500000, tzinfo=timezone.utc).timestamp()
    )
    assert rows["c4b9710c-8d64-4bee-a0b0-94637ae4cc65"]["labels"] == [1, 0, 0]
    assert rows["ab8147c6-195e-413c-b186-7f13441f7ccc"]["language"] == "fr"


def test_arena_140k_jsonl_iso_timestamps(tmp_path):
    prepare(FIXTURES / "arena_140k_sample.jsonl", "-o", tmp_path / "data", "--val-fraction", "0")
    tstamps = dict(everything(tmp_path / "data").select("id", "tstamp").iter_rows())
    expected = datetime(2025, 5, 10, 12, tzinfo=timezone.utc).timestamp()
    assert tstamps["c4b9710c-8d64-4bee-a0b0-94637ae4cc65"] == pytest.approx(expected)


def test_kaggle_55k_csv(tmp_path):
    prepare(FIXTURES / "kaggle_55k_sample.csv", "-o", tmp_path / "data", "--val-fraction", "0")
    battles = everything(tmp_path / "data")
    _, _, models, report = load(tmp_path / "data")
    assert report["inputs"][0]["format"] == "kaggle"
    rows = {r["id"]: r for r in battles.iter_rows(named=True)}
    assert set(rows) == {"30192", "53567", "65089", "96401", "198779"}
    assert rows["30192"]["prompt"] == [
        (
            "Is it morally right to try to have a certain percentage of females on "
            "managerial positions?"
        ),
        "OK, does pineapple belong on a pizza? Relax and give me fun answer.",
    ]
    assert rows["53567"]["prompt"] == [
        "What is the difference between marriage license and marriage certificate?"
    ]  # the null turn is skipped
    assert rows["65089"]["prompt"] == ["解释一下什么是量子纠缠，用简单的话。"]
    assert rows["96401"]["prompt"] == ['写一首关于秋天的诗, "短一点"\n谢谢']
    assert rows["198779"]["prompt"][0].startswith("What is the best way to travel")
    assert "\ufffd" in rows["198779"]["prompt"][0]  # the lone surrogate, replaced
    index = {name: i for i, name in enumerate(models)}
    assert models == sorted(models)
    assert rows["30192"]["labels"] == [index["gpt-4-1106-preview"], index["gpt-4-0613"], 0]
    assert rows["53567"]["labels"] == [index["gpt-4-0613"], index["koala-13b"], 0]
    assert rows["65089"]["winner"] == "tie"
    assert rows["65089"]["labels"] == [index["gpt-3.5-turbo-0613"], index["mistral-medium"], 1]


def test_generic_jsonl_with_mapped_columns(tmp_path):
    source = write_jsonl(
        tmp_path / "votes.jsonl",
        [
            {"question": "What is 2+2?", "left": "m1", "right": "m2", "vote": "m2", "uid": 7},
            {
                "question": ["Hi", "How are you?"],
                "left": "m2",
                "right": "m3",
                "vote": "A",
                "uid": 8,
            },
            {
                "question": [
                    {"role": "system", "content": "be brief"},
                    {"role": "user", "content": "Name a color"},
                ],
                "left": "m3",
                "right": "m1",
                "vote": "draw",
                "uid": 9,
            },
        ],
    )
    prepare(
        source,
        "-o",
        tmp_path / "data",
        "--val-fraction",
        "0",
        "--prompt-column",
        "question",
        "--model-a-column",
        "left",
        "--model-b-column",
        "right",
        "--winner-column",
        "vote",
        "--id-column",
        "uid",
    )
    rows = {r["id"]: r for r in everything(tmp_path / "data").iter_rows(named=True)}
    assert rows["7"]["winner"] == "model_b" and rows["7"]["labels"] == [1, 0, 0]
    assert rows["8"]["prompt"] == ["Hi", "How are you?"] and rows["8"]["labels"] == [1, 2, 0]
    assert rows["9"]["prompt"] == ["Name a color"] and rows["9"]["labels"] == [2, 0, 1]


def test_generic_csv_plain_and_json_list_prompts(tmp_path):
    source = tmp_path / "votes.csv"
    source.write_text(
        "prompt,model_a,model_b,winner,weight\n"
        '"Write a poem,\nwith a line break",x,y,model_a,2.5\n'
        '"[""turn one"", ""turn two""]",y,x,tie (bothbad),\n'
        '"[not json] keep me as text",x,y,model_b,1\n',
        encoding="utf-8",
    )
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    rows = everything(tmp_path / "data").sort("weight", nulls_last=True).to_dicts()
    assert [r["prompt"] for r in rows] == [
        ["[not json] keep me as text"],
        ["Write a poem,\nwith a line break"],
        ["turn one", "turn two"],
    ]
    assert [r["weight"] for r in rows] == [1.0, 2.5, None]
    assert [r["labels"] for r in rows] == [[1, 0, 0], [0, 1, 0], [1, 0, 2]]


def test_stdin_and_parquet_round_trip_of_own_output(tmp_path):
    records = [vote(f"prompt {i}", "b", "a", "model_a") for i in range(5)]
    data = "".join(json.dumps(r) + "\n" for r in records)
    prepare("-", "-o", tmp_path / "first", "--val-fraction", "0", input=data)
    first = everything(tmp_path / "first")
    assert first["labels"].to_list() == [[1, 0, 0]] * 5  # "b" is index 1
    # prepare's own output is a generic battles file: preparing it again changes nothing
    prepare(tmp_path / "first" / "train.parquet", "-o", tmp_path / "second", "--val-fraction", "0")
    assert everything(tmp_path / "second").equals(first)


def test_stdin_csv_and_a_folder_of_inputs(tmp_path):
    data = (FIXTURES / "kaggle_55k_sample.csv").read_bytes()
    result = prepare("-", "-o", tmp_path / "from-stdin", "--val-fraction", "0", input=data)
    assert everything(tmp_path / "from-stdin").height == 5
    # a folder: its data files, not the JSON beside them (here a prepared folder's own)
    result = prepare(tmp_path / "from-stdin", "-o", tmp_path / "again", "--val-fraction", "0")
    assert everything(tmp_path / "again").height == 5
    assert [i["path"].rsplit("/", 1)[-1] for i in load(tmp_path / "again")[3]["inputs"]] == [
        "train.parquet",
        "val.parquet",
    ]
    assert "Traceback" not in result.output


def test_filters_on_missing_columns_warn(tmp_path):
    source = write_jsonl(
        tmp_path / "v.jsonl", [vote(f"q{i}", "a", "b", "model_a") for i in range(3)]
    )
    result = prepare(source, "-o", tmp_path / "data", "--anony-only", "--val-fraction", "0")
    assert "no 'anony' column, so --anony-only keeps all its battles" in result.output
    assert load(tmp_path / "data")[3]["battles"] == 3


# ------------------------------------------------------------------------ labels by hand


def test_labels_match_a_hand_computation(tmp_path):
    # sorted: alpha=0, mid=1, zeta=2
    source = write_jsonl(
        tmp_path / "v.jsonl",
        [
            vote("p1", "zeta", "alpha", "model_a", id="1"),
            vote("p2", "zeta", "alpha", "model_b", id="2"),
            vote("p3", "mid", "zeta", "tie", id="3"),
            vote("p4", "alpha", "mid", "tie (bothbad)", id="4"),
            vote("p5", "mid", "alpha", "model_a", id="5"),
        ],
    )
    prepare(source, "-o", tmp_path / "data", "--val-fraction", "0")
    battles = everything(tmp_path / "data")
    assert load(tmp_path / "data")[2] == ["alpha", "mid", "zeta"]
    assert battles["labels"].to_list() == [[2, 0, 0], [0, 2, 0], [1, 2, 1], [0, 1, 2], [1, 0, 0]]
    assert battles.schema["labels"] == pl.List(pl.Int64)
    assert battles.schema["prompt"] == pl.List(pl.String)


# -------------------------------------------------------------------------- drop reasons


def test_every_drop_reason_is_counted(tmp_path):
    keep = [vote(f"fine {i}", "a", "b", "model_a", language="English") for i in range(4)]
    records = keep + [
        vote("", "a", "b", "model_a", language="English"),  # empty prompt
        vote(["  ", None], "a", "b", "model_a", language="English"),  # only blank turns
        vote("who won?", "a", "b", "model_c", language="English"),  # unknown winner
        vote("who won?", "a", "b", None, language="English"),  # no winner
        vote("mirror", "a", "a", "tie", language="English"),  # same model
        vote("named", "a", "b", "model_b", language="English", anony=False),
        vote("bonjour", "a", "b", "model_b", language="French"),
        vote("outsider", "a", "z", "model_b", language="English"),  # z not allowed
        keep[0],  # duplicate
        # c has 2 battles, d has 1: d goes first, then c falls below 2 as well
        vote("c vs d", "c", "d", "model_a", language="English"),
        vote("c vs a", "c", "a", "model_a", language="English"),
    ]
    source = write_jsonl(tmp_path / "v.jsonl", records)
    prepare(
        source,
        "-o",
        tmp_path / "data",
        "--val-fraction",
        "0",
        "--anony-only",
        "--language",
        "english",
        "--models",
        "a,b,c",
        "--models",
        "d",
        "--min-battles-per-model",
        "2",
    )
    _, _, models, report = load(tmp_path / "data")
    assert report["drops"] == {
        "malformed": 0,
        "empty_prompt": 2,
        "unknown_winner": 2,
        "same_model": 1,
        "not_anonymous": 1,
        "language": 1,
        "model_not_allowed": 1,
        "duplicate": 1,
        "prompt_in_val": 0,
        "few_battles": 2,
    }
    assert report["rows_read"] == len(records) and report["battles"] == 4
    assert models == ["a", "b"]
    kept = sorted(everything(tmp_path / "data")["prompt"].to_list())
    assert kept == [[f"fine {i}"] for i in range(4)]


def test_keep_duplicates(tmp_path):
    source = write_jsonl(tmp_path / "v.jsonl", [vote("same", "a", "b", "model_a")] * 3)
    prepare(source, "-o", tmp_path / "dedup", "--val-fraction", "0")
    prepare(source, "-o", tmp_path / "all", "--val-fraction", "0", "--keep-duplicates")
    assert everything(tmp_path / "dedup").height == 1
    assert everything(tmp_path / "all").height == 3


def test_same_file_twice_is_deduplicated_by_glob(tmp_path):
    records = [vote(f"q{i}", "a", "b", "model_b", id=str(i)) for i in range(6)]
    write_jsonl(tmp_path / "part-1.jsonl", records[:4])
    write_jsonl(tmp_path / "part-2.jsonl", records[2:])  # two battles in both parts
    prepare(str(tmp_path / "part-*.jsonl"), "-o", tmp_path / "data", "--val-fraction", "0")
    report = load(tmp_path / "data")[3]
    assert [i["rows"] for i in report["inputs"]] == [4, 4]
    assert report["drops"]["duplicate"] == 2
    assert sorted(everything(tmp_path / "data")["id"].to_list()) == [str(i) for i in range(6)]


# ------------------------------------------------------------------------------- splits


def _repeated_prompts(n_prompts: int) -> list[dict]:
    records = []
    for p in range(n_prompts):
        for k in range(1 + p % 4):  # each prompt asked 1 to 4 times
            records.append(
                vote(
                    f"prompt number {p}",
                    f"m{k % 3}",
                    f"m{(k + 1) % 3}",
                    "model_a",
                    tstamp=1_700_000_000 + 60 * len(records),
                )
            )
    return records


def test_random_split_keeps_each_prompt_on_one_side(tmp_path):
    source = write_jsonl(tmp_path / "v.jsonl", _repeated_prompts(200))
    prepare(source, "-o", tmp_path / "a", "--val-fraction", "0.2", "--seed", "1")
    train, val, _, report = load(tmp_path / "a")
    train_prompts = {tuple(p) for p in train["prompt"].to_list()}
    val_prompts = {tuple(p) for p in val["prompt"].to_list()}
    assert not train_prompts & val_prompts
    assert len(train_prompts | val_prompts) == 200
    total = train.height + val.height
    assert abs(val.height - 0.2 * total) <= 4  # whole prompts of at most 4 battles
    assert report["split"]["val_prompts"] == len(val_prompts)
    # seeded: the same seed gives the same split, another seed another one
    prepare(source, "-o", tmp_path / "b", "--val-fraction", "0.2", "--seed", "1")
    prepare(source, "-o", tmp_path / "c", "--val-fraction", "0.2", "--seed", "2")
    assert load(tmp_path / "b")[1]["id"].to_list() == val["id"].to_list()
    assert set(load(tmp_path / "c")[1]["id"].to_list()) != set(val["id"].to_list())


def test_chrono_split_takes_the_latest_battles(tmp_path):
    records = _repeated_prompts(50)
    records.reverse()  # input order is not time order
    source = write_jsonl(tmp_path / "v.jsonl", records)
    prepare(source, "-o", tmp_path / "data", "--val-split", "chrono", "--val-fraction", "0.25")
    train, val, _, report = load(tmp_path / "data")
    assert val.height == round(0.25 * len(records))
    assert val["tstamp"].min() > train["tstamp"].max()
    assert report["split"]["method"] == "chrono"


def test_chrono_split_needs_every_tstamp(tmp_path):
    records = _repeated_prompts(5)
    del records[3]["tstamp"]
    source = write_jsonl(tmp_path / "v.jsonl", records)
    result = run_cli("prepare", source, "-o", tmp_path / "data", "--val-split", "chrono")
    assert result.exit_code == 2
    assert "1 battles have no tstamp" in result.output and "v.jsonl: line 4" in result.output


def test_val_file_supplies_the_split_and_removes_its_prompts_from_train(tmp_path):
    train_source = write_jsonl(
        tmp_path / "train.jsonl",
        [
            vote("shared prompt", "a", "b", "model_a"),
            vote("train only", "a", "b", "model_b"),
            vote("train only 2", "b", "c", "tie"),
        ],
    )
    val_source = write_jsonl(
        tmp_path / "val.jsonl",
        [
            vote("shared prompt", "b", "a", "model_b"),
            vote("val only", "a", "c", "model_a"),
        ],
    )
    prepare(train_source, "-o", tmp_path / "data", "--val-file", val_source)
    train, val, models, report = load(tmp_path / "data")
    assert models == ["a", "b", "c"]
    assert sorted(p[0] for p in train["prompt"].to_list()) == ["train only", "train only 2"]
    assert sorted(p[0] for p in val["prompt"].to_list()) == ["shared prompt", "val only"]
    assert report["drops"]["prompt_in_val"] == 1
    assert val.filter(pl.col("prompt").list.first() == "val only")["labels"].to_list() == [
        [0, 2, 0]
    ]


# ------------------------------------------------------------------------------ bad rows


def test_malformed_jsonl_line_exits_2_naming_file_and_line(tmp_path):
    source = tmp_path / "bad.jsonl"
    good = json.dumps(vote("fine", "a", "b", "model_a"))
    source.write_text(f'{good}\n{good}\n{{"prompt": "cut off\n{good}\n')
    proc = run_p2l("prepare", source, "-o", tmp_path / "data")
    assert proc.returncode == 2
    err = proc.stderr.decode()
    assert "bad.jsonl: line 3: not valid JSON" in err and "--skip-bad-rows" in err
    assert "Traceback" not in err
    assert not (tmp_path / "data" / "train.parquet").exists()


def test_malformed_rows_in_csv_and_parquet_name_their_position(tmp_path):
    csv_source = tmp_path / "kaggle.csv"
    lines = (FIXTURES / "kaggle_55k_sample.csv").read_text(encoding="utf-8").splitlines()
    lines.insert(3, '7,a,b,"[""unterminated",x,y,1,0,0')
    csv_source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("prepare", csv_source, "-o", tmp_path / "data")
    assert result.exit_code == 2
    assert "kaggle.csv: line 4: prompt is not a JSON list" in result.output

    table = pa.table(
        {
            "prompt": ["x", "y", "z"],
            "model_a": ["a", "a", None],
            "model_b": ["b", "b", "b"],
            "winner": ["model_a"] * 3,
        }
    )
    pq.write_table(table, tmp_path / "votes.parquet")
    result = run_cli("prepare", tmp_path / "votes.parquet", "-o", tmp_path / "data")
    assert result.exit_code == 2
    assert "votes.parquet: row 2: model_a is missing" in result.output


def test_skip_bad_rows_counts_them(tmp_path):
    source = tmp_path / "bad.jsonl"
    rows = [json.dumps(vote(f"fine {i}", "a", "b", "model_a")) for i in range(3)]
    source.write_text(
        "\n".join(
            [
                rows[0],
                "not json",
                rows[1],
                "[1, 2]",
                rows[2],
                json.dumps(vote("w", "a", "b", "model_a", weight=-1)),
            ]
        )
        + "\n"
    )
    prepare(source, "-o", tmp_path / "data", "--skip-bad-rows", "--val-fraction", "0")
    report = load(tmp_path / "data")[3]
    assert report["drops"]["malformed"] == 3
    assert report["battles"] == 3
    assert report["bad_rows"][0].endswith("bad.jsonl: line 2: not valid JSON (Expecting value)")


def test_missing_column_is_a_usage_error(tmp_path):
    source = write_jsonl(tmp_path / "v.jsonl", [{"prompt": "x", "model_a": "a", "model_b": "b"}])
    result = run_cli("prepare", source, "-o", tmp_path / "data")
    assert result.exit_code == 2
    assert "v.jsonl: no column 'winner'" in result.output
    other = write_jsonl(tmp_path / "w.jsonl", [{"text": "x"}])
    result = run_cli("prepare", other, "-o", tmp_path / "data")
    assert result.exit_code == 2 and "cannot tell the format" in result.output


def test_failed_run_leaves_previous_outputs_untouched(tmp_path):
    good = write_jsonl(
        tmp_path / "good.jsonl", [vote(f"q{i}", "a", "b", "model_a") for i in range(4)]
    )
    prepare(good, "-o", tmp_path / "data", "--val-fraction", "0")
    before = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good.read_text() + "{oops\n")
    assert run_cli("prepare", bad, "-o", tmp_path / "data").exit_code == 2
    after = {p.name: p.read_bytes() for p in (tmp_path / "data").iterdir()}
    assert after == before  # nothing replaced, no staging folder left behind


def test_small_batches_give_the_same_output(tmp_path):
    records = _repeated_prompts(40)
    source = write_jsonl(tmp_path / "v.jsonl", records)
    prepare(source, "-o", tmp_path / "big", "--val-fraction", "0.2")
    prepare(source, "-o", tmp_path / "small", "--val-fraction", "0.2", "--batch-rows", "3")
    for name in ("train.parquet", "val.parquet"):
        assert pl.read_parquet(tmp_path / "big" / name).equals(
            pl.read_parquet(tmp_path / "small" / name)
        )


def test_unknown_extension_names_input_format_and_it_works(tmp_path):
    source = tmp_path / "votes.dat"
    source.write_text("prompt,model_a,model_b,winner\nHi there,b,a,model_a\nBye,a,b,tie\n")
    result = run_cli("prepare", source, "-o", tmp_path / "data")
    assert result.exit_code == 2
    # --format is the schema in prepare; the file type has its own option
    assert "votes.dat: cannot tell the file type from the extension; use --input-format" in (
        result.output
    )
    result = run_cli("prepare", source, "-o", tmp_path / "data", "--input-format", "xlsx")
    assert result.exit_code == 2 and "--input-format 'xlsx'" in result.output
    prepare(source, "-o", tmp_path / "data", "--input-format", "csv", "--val-fraction", "0")
    rows = everything(tmp_path / "data").sort("winner").to_dicts()
    assert [(r["prompt"], r["labels"]) for r in rows] == [
        (["Hi there"], [1, 0, 0]),  # b (index 1) beat a
        (["Bye"], [0, 1, 1]),  # a tie, in the order a then b
    ]
