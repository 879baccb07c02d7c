"""Heads: the map from a pooled hidden state to M Bradley-Terry coefficients (and eta).

Parameter names follow the published P2L checkpoints (``head.weight``/``head.bias`` and
``eta_head.weight``/``eta_head.bias`` inside the module the model calls ``head``), so their
weights load unchanged. A low-rank head factors the coefficient layer through ``rank``
dimensions: few effective parameters, which helps when votes are scarce. A hidden-layer head
(``hidden``) normalises the pooled state, maps it to ``hidden`` units through a nonlinearity
and then to the coefficients: ``gelu`` is a small MLP, ``softmax`` a gated mixture of
``hidden`` leaderboards (prompts that cluster by topic pick a blend of topic leaderboards).
Every head keeps its coefficient layer last in ``head`` (``head.head.<i>.weight``).
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_TYPES = ("bt", "rk")
HEAD_ACTIVATIONS = ("gelu", "softmax")


def _activation(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()
    if name == "softmax":
        return nn.Softmax(dim=-1)
    raise ValueError(f"unknown head activation {name!r}; expected one of {HEAD_ACTIVATIONS}")


class P2LHead(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        num_models: int,
        head_type: str = "bt",
        rank: int | None = None,
        hidden: int | None = None,
        activation: str = "gelu",
    ):
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ValueError(f"unknown head type {head_type!r}; expected one of {HEAD_TYPES}")
        if rank and hidden:
            raise ValueError("a head has either a rank or a hidden layer, not both")
        self.head_type = head_type
        if hidden:
            self.head = nn.Sequential(
                nn.LayerNorm(hidden_size),
                nn.Linear(hidden_size, hidden),
                _activation(activation),
                nn.Linear(hidden, num_models),
            )
        elif rank:
            self.head = nn.Sequential(
                nn.Linear(hidden_size, rank, bias=False), nn.Linear(rank, num_models)
            )
        else:
            self.head = nn.Linear(hidden_size, num_models)
        self.eta_head = nn.Linear(hidden_size, 1) if head_type == "rk" else None

    @property
    def output_layer(self) -> nn.Linear:
        return self.head[-1] if isinstance(self.head, nn.Sequential) else self.head

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        coefs = self.head(pooled)
        eta = self.eta_head(pooled).squeeze(-1) if self.eta_head is not None else None
        return coefs, eta

    @torch.no_grad()
    def initialise(
        self,
        scheme: str = "normal",
        bias: torch.Tensor | None = None,
        eta: float | None = None,
        std: float = 0.02,
    ) -> None:
        """``scheme``: ``zeros`` (start exactly at the bias), ``normal`` (small noise), or
        ``xavier``. ``bias`` (e.g. the marginal leaderboard) and ``eta`` set the starting
        point, so training starts from the baseline."""
        layers = [m for m in self.modules() if isinstance(m, nn.Linear)]
        for layer in layers:
            if scheme == "zeros" and layer is self.output_layer:
                nn.init.zeros_(layer.weight)
            elif scheme == "xavier":
                nn.init.xavier_uniform_(layer.weight)
            else:
                nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        if self.eta_head is not None and scheme == "zeros":
            nn.init.zeros_(self.eta_head.weight)
        if bias is not None:
            self.output_layer.bias.copy_(torch.as_tensor(bias, dtype=self.output_layer.bias.dtype))
        if eta is not None and self.eta_head is not None:
            self.eta_head.bias.fill_(float(eta))
