"""Tiny random-weight backbones for tests: Qwen2, Llama and BERT built from a config, with a
tokenizer trained here on a small corpus. Nothing is downloaded."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    LlamaConfig,
    LlamaModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2Model,
)

CORPUS = [
    "write a python function that sorts a list of numbers",
    "solve the equation x squared plus two x minus three equals zero",
    "compose a short poem about the autumn sea and the moon",
    "translate this sentence into french please: the cat sleeps",
    "hello how are you doing today my friend",
    "write a sql query that joins orders and customers by id",
    "explain recursion in javascript with an example",
    "what is the derivative of sine of x times cosine of x",
    "tell me a story about a dragon who learns to cook",
    "请把这句话翻译成英文：今天天气很好",
] * 20

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
)


def train_bpe_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (decoder style) with chat markers; no cls/pad tokens, so
    P2L must add them."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = None
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    fast.chat_template = CHAT_TEMPLATE
    return fast


def learn_wordpiece_vocab(corpus: list[str], size: int, specials: list[str]) -> list[str]:
    """A WordPiece vocabulary learnt from ``corpus`` by greedy pair merges (the most frequent
    adjacent pair first; ties go to the first pair in sorted order). Unlike ``tokenizers``'
    trainers, whose tie-breaking varies from process to process, it is the same in every
    process, so a test's tiny backbone is too."""
    normalizer = normalizers.BertNormalizer(lowercase=True)
    splitter = pre_tokenizers.BertPreTokenizer()
    counts: dict[tuple[str, ...], int] = {}
    for text in corpus:
        for word, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)):
            pieces = (word[0], *(f"##{c}" for c in word[1:]))
            counts[pieces] = counts.get(pieces, 0) + 1
    # every character seen stands alone too, as in ``tokenizers``' trainers
    alphabet = {piece for pieces in counts for piece in pieces}
    alphabet |= {piece.removeprefix("##") for piece in alphabet}
    vocab = [*specials, *sorted(alphabet)]
    while len(vocab) < size:
        pairs: dict[tuple[str, str], int] = {}
        for pieces, n in counts.items():
            for pair in pairwise(pieces):
                pairs[pair] = pairs.get(pair, 0) + n
        if not pairs:
            break
        first, second = min(pairs, key=lambda pair: (-pairs[pair], pair))
        merged = first + second.removeprefix("##")
        if merged not in vocab:  # the same text can be reached by two merges
            vocab.append(merged)
        joined = {}
        for pieces, n in counts.items():
            out, i = [], 0
            while i < len(pieces):
                if pieces[i : i + 2] == (first, second):
                    out.append(merged)
                    i += 2
                else:
                    out.append(pieces[i])
                    i += 1
            joined[tuple(out)] = joined.get(tuple(out), 0) + n
        counts = joined
    return vocab


def train_wordpiece_tokenizer(vocab_size: int = 300) -> PreTrainedTokenizerFast:
    """A BERT-style WordPiece tokenizer with [CLS]/[SEP]/[PAD]."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = learn_wordpiece_vocab(CORPUS, vocab_size, specials)
    ids = {piece: i for i, piece in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(ids, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        pad_token="[PAD]", mask_token="[MASK]",
    )


def _decoder_kwargs(vocab: int) -> dict:
    return {
        "vocab_size": vocab, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 256,
    }


def make_backbone(kind: str, folder: str | Path, seed: int = 0) -> Path:
    """Save a tiny random ``kind`` backbone ("qwen2", "llama" or "bert") with its tokenizer
    into ``folder``, loadable offline with AutoModel/AutoTokenizer. Returns the folder."""
    import torch

    torch.manual_seed(seed)
    folder = Path(folder)
    if kind == "bert":
        tokenizer = train_wordpiece_tokenizer()
        config = BertConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256,
        )
        model = BertModel(config, add_pooling_layer=False)
    elif kind in ("qwen2", "llama"):
        tokenizer = train_bpe_tokenizer()
        if kind == "qwen2":
            model = Qwen2Model(Qwen2Config(**_decoder_kwargs(len(tokenizer))))
        else:
            model = LlamaModel(LlamaConfig(**_decoder_kwargs(len(tokenizer))))
    else:
        raise ValueError(kind)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder
