"""The test helpers' tiny tokenizers: learnt the same way in every process."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO
from tiny import learn_wordpiece_vocab

SPECIALS = ["[PAD]", "[UNK]"]


def test_wordpiece_merges_by_hand():
    # words: "abab" = a ##b ##a ##b and "ab" = a ##b. Pair counts: (a, ##b) 2, (##b, ##a) 1,
    # (##a, ##b) 1 -> "ab". Then (ab, ##a) 1 and (##a, ##b) 1 tie: "##a" sorts first -> "##ab".
    # Then (ab, ##ab) -> "abab", and no pair is left. Every character also stands alone ("b").
    vocab = learn_wordpiece_vocab(["abab ab"], 100, SPECIALS)
    assert vocab == ["[PAD]", "[UNK]", "##a", "##b", "a", "b", "ab", "##ab", "abab"]
    assert learn_wordpiece_vocab(["abab ab"], 7, SPECIALS) == vocab[:7]


@pytest.mark.slow
def test_the_tiny_bert_tokenizer_is_the_same_in_two_processes():
    code = (
        "import json, sys; sys.path.insert(0, 'tests'); from tiny import train_wordpiece_tokenizer;"
        "print(json.dumps(sorted(train_wordpiece_tokenizer().get_vocab().items())))"
    )
    runs = [
        subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True).stdout
        for _ in range(2)
    ]  # fmt: skip
    assert runs[0] == runs[1] and len(runs[0]) > 1000
