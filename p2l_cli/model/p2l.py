"""The P2L model: a backbone, a pooling rule and a head; plus turning prompts into inputs.

The input of a decoder is the chat template applied to the user turns (no generation
prompt), any literal cls token in the text replaced, then the cls token appended; truncation
is from the left so that the cls token always survives. Coefficients come from the head
applied to the hidden state at the cls token (the last real token). Encoders read the user
turns joined by blank lines, with their own special tokens, pooled at the first token or by
the mean.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from p2l_cli.model import prompt_features as pf
from p2l_cli.model.heads import P2LHead
from p2l_cli.model.neighbours import Neighbours
from p2l_cli.model.smoothing import Smoothing
from p2l_cli.stats.families import canonical_family


@dataclass
class P2LInfo:
    """What a P2L model needs besides its weights; saved in ``training_config.json``."""

    model_list: list[str]
    head_type: str = "bt"
    loss_type: str = "bt"
    pooling: str = "cls"
    max_length: int = 1024
    backbone: str = ""
    model_type: str = ""
    head_rank: int | None = None
    head_hidden: int | None = None
    head_activation: str = "gelu"
    head_rank_bias: bool = False  # the low-rank head's first layer has a bias (reference)
    head_eta_downsize: bool = False  # eta read from the low-rank layer (reference RKHead)
    chat_template: str | None = None
    encoder: bool = False
    normalize: bool = False  # L2-normalise the pooled state (sentence-embedding style)
    prompt_features: bool = False  # append prompt_features.NAMES to the pooled state
    length_steps: list[int] | None = None  # and steps at these token counts (feature_names)
    untruncated_features: bool = False  # the descriptors read the whole prompt, not max_length
    word_pieces: bool = False  # a descriptor: the share of tokens that continue a word
    neighbours: dict | None = None  # {"k", "penalty", "anchors"}: see model/neighbours.py
    smoothing: dict | None = None  # {"k", "steps", "anchors"[, "lexical"]}: model/smoothing.py
    extra: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        return canonical_family(self.loss_type)

    def metadata(self) -> dict:
        """The predictions file's ``p2l`` metadata object."""
        return {"models": list(self.model_list), "head": self.head_type, "loss": self.family}

    def to_config(self) -> dict:
        config = asdict(self)
        config.pop("model_list")
        extra = config.pop("extra")
        return {**extra, **config}


@dataclass
class P2LOutput:
    coefs: torch.Tensor
    eta: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


class P2LModel(nn.Module):
    """``model`` is the backbone, ``head`` the P2L head: the published checkpoints' names."""

    def __init__(
        self,
        backbone: nn.Module,
        info: P2LInfo,
        cls_token_id: int | None,
        token_classes: torch.Tensor | None = None,
        continuations: torch.Tensor | None = None,
    ):
        super().__init__()
        self.model = backbone
        self.info = info
        self.cls_token_id = cls_token_id
        self.features = None
        if info.prompt_features:
            vocab = backbone.get_input_embeddings().weight.shape[0]
            cap = info.max_length if info.untruncated_features else None
            self.features = pf.PromptFeatures(vocab, token_classes, info.length_steps or (), cap,
                                              info.word_pieces, continuations)  # fmt: skip
        self.neighbours = None
        if info.neighbours:
            self.attach_neighbours(**info.neighbours)
        self.smoothing = None
        if info.smoothing:
            self.attach_smoothing(**info.smoothing)
        self.head = P2LHead(
            self.pooled_size,
            len(info.model_list),
            info.head_type,
            info.head_rank,
            info.head_hidden,
            info.head_activation,
            rank_bias=info.head_rank_bias,
            eta_downsize=info.head_eta_downsize,
        )

    @property
    def config(self):
        return self.model.config

    def attach_neighbours(self, k: int, penalty: float, anchors: int) -> Neighbours:
        """Add (empty) neighbourhood leaderboards over ``anchors`` stored training votes."""
        hidden = self.model.config.hidden_size
        self.neighbours = Neighbours(anchors, hidden, k, penalty, self.info.family)
        self.info.neighbours = {"k": k, "penalty": penalty, "anchors": anchors}
        return self.neighbours

    def attach_smoothing(
        self, k: int, steps: int, anchors: int, lexical: float = 0.0
    ) -> Smoothing:
        """Add (empty) graph smoothing of the embedding over ``anchors`` training prompts;
        with ``lexical``, similar prompts are searched by their words too (this needs the
        prompt descriptors, which know the special tokens)."""
        if lexical and self.features is None:
            raise ValueError("smoothing that reads the prompts' words needs prompt_features")
        words_width = self.model.get_input_embeddings().weight.shape[1]
        self.smoothing = Smoothing(anchors, self.model.config.hidden_size, k, steps, lexical,
                                   words_width)  # fmt: skip
        self.info.smoothing = {"k": k, "steps": steps, "anchors": anchors}
        if lexical:
            self.info.smoothing["lexical"] = float(lexical)
        return self.smoothing

    @property
    def reads_words(self) -> bool:
        """Whether the smoothing searches neighbours with the prompts' words."""
        return self.smoothing is not None and bool(self.smoothing.lexical)

    def text_embedding(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The prompts' words: their mean input token embedding (needs prompt_features)."""
        table = self.model.get_input_embeddings().weight.detach()
        return self.features.mean_text_embedding(input_ids, attention_mask, table)

    def words(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor | None:
        """The prompts' words where the smoothing searches with them (``None`` elsewhere)."""
        return self.text_embedding(input_ids, attention_mask) if self.reads_words else None

    def head_input(self, pooled: torch.Tensor, words: torch.Tensor | None = None) -> torch.Tensor:
        """What the head reads: the pooled state, its embedding part smoothed if any (over
        neighbours found with the prompts' ``words`` where the smoothing reads them)."""
        if self.smoothing is None:
            return pooled
        hidden = self.model.config.hidden_size
        smoothed = self.smoothing(pooled[:, :hidden], words)
        return torch.cat([smoothed, pooled[:, hidden:]], dim=-1)

    def refine(self, pooled: torch.Tensor, coefs: torch.Tensor) -> torch.Tensor:
        """The head's coefficients, refined by the neighbourhood leaderboards if any."""
        if self.neighbours is None:
            return coefs
        return self.neighbours(pooled[:, : self.model.config.hidden_size], coefs)

    @property
    def pooled_size(self) -> int:
        """The width of what the head reads: the hidden size, plus the prompt features."""
        return self.model.config.hidden_size + len(self.feature_names)

    @property
    def feature_names(self) -> list[str]:
        """The names of the descriptors after the hidden state (none without features)."""
        if not self.info.prompt_features:
            return []
        return pf.feature_names(self.info.length_steps or (), self.info.word_pieces)

    def pool(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_length: int | None = None
    ) -> torch.Tensor:
        """The pooled state (plus descriptors) of whole prompts; the backbone reads each
        prompt's ``max_length`` (default: the model's) tokens (see ``backbone_window``)."""
        ids, mask = backbone_window(
            input_ids, attention_mask, max_length or self.info.max_length, self.info.encoder
        )
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = pool_hidden(hidden, mask, self.info.pooling)
        if self.info.normalize:
            pooled = F.normalize(pooled.float(), dim=-1).to(pooled.dtype)
        if self.features is not None:
            if not self.info.untruncated_features:
                input_ids, attention_mask = ids, mask
            extra = self.features(input_ids, attention_mask).to(pooled.dtype)
            pooled = torch.cat([pooled, extra], dim=-1)
        return pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        return_pooled: bool = False,
        max_length: int | None = None,
    ) -> P2LOutput:
        pooled = self.pool(input_ids, attention_mask, max_length)
        read = self.head_input(pooled, self.words(input_ids, attention_mask))
        coefs, eta = self.head(read.to(self.head.output_layer.weight.dtype))
        coefs = self.refine(pooled, coefs)
        return P2LOutput(
            coefs=coefs.float(),
            eta=None if eta is None else eta.float(),
            pooled=pooled if return_pooled else None,
        )


def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """``cls``: the last real token (right padding); ``first``: token 0; ``mean``: masked mean."""
    if pooling == "cls":
        last = attention_mask.long().sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "mean":
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"unknown pooling {pooling!r}")


def backbone_window(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, max_length: int, encoder: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens a backbone reading ``max_length`` tokens sees of each right-padded row:
    its last ``max_length`` (a decoder's end with the cls token), and an encoder its opening
    special token in place of the first of them: exactly what truncating from the left at
    tokenisation gives. Rows that fit are left as they are."""
    if input_ids.shape[1] <= max_length:
        return input_ids, attention_mask
    lengths = attention_mask.long().sum(dim=1, keepdim=True)
    width = min(int(lengths.max()), max_length)
    positions = torch.arange(width, device=input_ids.device).expand(input_ids.shape[0], -1)
    shifted = positions + (lengths - max_length).clamp_min(0)
    if encoder:
        shifted[:, 0] = 0
    return input_ids.gather(1, shifted), attention_mask.gather(1, shifted)


# ----------------------------------------------------------------------- prompts -> tokens


def prompt_text(tokenizer, turns: list[str], info: P2LInfo) -> str:
    """The text a backbone reads for a prompt given as its user turns."""
    if info.encoder:
        # with prompt features, the separator token marks the turns (see prompt_features)
        joiner = f" {tokenizer.sep_token} " if info.prompt_features else "\n\n"
        return joiner.join(turns)
    messages = [{"role": "user", "content": turn} for turn in turns]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    return text.replace(tokenizer.cls_token, "")


def encode_prompts(tokenizer, prompts: list[list[str]], info: P2LInfo) -> list[list[int]]:
    """Token ids per prompt, ending with the cls token (decoders) or wrapped in the
    encoder's special tokens; truncated from the left to ``info.max_length``, unless the
    model's descriptors read the whole prompt: then the rows are whole and ``P2LModel``
    cuts the backbone's window itself (``backbone_window``)."""
    texts = [prompt_text(tokenizer, turns, info) for turns in prompts]
    whole = info.prompt_features and info.untruncated_features
    if info.encoder:
        if whole:
            return [list(row) for row in tokenizer(texts)["input_ids"]]
        encoded = tokenizer(texts, truncation=True, max_length=info.max_length)
        return [list(row) for row in encoded["input_ids"]]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    room = info.max_length - 1
    cls = tokenizer.cls_token_id
    if whole:
        return [list(row) + [cls] for row in ids]
    return [(row[-room:] if room > 0 else []) + [cls] for row in ids]


def collate(
    batch_ids: list[list[int]], pad_token_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest sequence of the batch (dynamic padding)."""
    width = max(len(row) for row in batch_ids)
    input_ids = torch.full((len(batch_ids), width), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(batch_ids), width), dtype=torch.long)
    for i, row in enumerate(batch_ids):
        input_ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, : len(row)] = 1
    if device is not None:
        input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return input_ids, attention_mask
