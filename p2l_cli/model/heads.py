"""Heads: the map from a pooled hidden state to M Bradley-Terry coefficients (and eta).

Parameter names follow the published P2L checkpoints (``head.weight``/``head.bias`` and
``eta_head.weight``/``eta_head.bias`` inside the module the model calls ``head``), so their
weights load unchanged. A low-rank head factors the coefficient layer through ``rank``
dimensions: few effective parameters, which helps when votes are scarce. A hidden-layer head
(``hidden``) normalises the pooled state, maps it to ``hidden`` units through a nonlinearity
and then to the coefficients: ``gelu`` is a small MLP, ``softmax`` a gated mixture of
``hidden`` leaderboards (prompts that cluster by topic pick a blend of topic leaderboards).
Every head keeps its coefficient layer last in ``head`` (``head.head.<i>.weight``).

Heads of the reference implementation (lmarena/p2l) load under their names too:

- its low-rank head (``linear_head_downsize_factor = f``: rank ``M // f``) gives the first
  layer a bias: ``rank_bias``;
- its ``RKHead(eta_downsize=True)`` reads eta from the rank-dimensional layer, shared with
  the coefficients: ``eta_head = Sequential(head[0], Linear(rank, 1))`` (``eta_head.0`` is
  ``head.0``); without ``eta_downsize`` eta reads the pooled state, as here;
- its ``BAHead`` (``head_type="ba"``) adds ``gamma_head``, a learned reference strength
  per prompt. The forward pass returns the coefficients relative to it, ``theta - gamma``
  (what the ``ba`` likelihood depends on, see ``stats.families``); :meth:`P2LHead.parts`
  gives the raw coefficients, eta and gamma.

Initialisation schemes (:meth:`P2LHead.initialise`): ``zeros``, ``normal``, ``xavier`` and
the reference's ``reset_params`` (torch's default for a linear layer), ``he_unif``
(Kaiming uniform with the sigmoid gain 1: U(+-sqrt(3 / fan_in))), ``xavier_unif``
(U(+-sqrt(6 / (fan_in + fan_out)))) and ``tiny_normal`` (Kaiming normal with the default
leaky-ReLU gain sqrt(2): N(0, 2 / fan_in), despite the name); the reference zeroes every
bias after each of these, and so does p2l.
"""

from __future__ import annotations

import torch
from torch import nn

HEAD_TYPES = ("bt", "rk", "ba")
HEAD_ACTIVATIONS = ("gelu", "softmax")
HEAD_INITS = ("zeros", "normal", "xavier", "reset_params", "he_unif", "xavier_unif",
              "tiny_normal")


def head_for_family(family: str) -> str:
    """The head a likelihood family needs: ``ba`` (eta and gamma) for ba, ``rk`` (eta) for
    the other families with a tie parameter, else ``bt``."""
    from p2l_cli.stats.families import canonical_family, has_eta

    family = canonical_family(family)
    return "ba" if family == "ba" else "rk" if has_eta(family) else "bt"


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
        rank_bias: bool = False,
        eta_downsize: bool = False,
    ):
        super().__init__()
        if head_type not in HEAD_TYPES:
            raise ValueError(f"unknown head type {head_type!r}; expected one of {HEAD_TYPES}")
        if rank and hidden:
            raise ValueError("a head has either a rank or a hidden layer, not both")
        if eta_downsize and not (rank and head_type == "rk"):
            raise ValueError("eta_downsize reads eta from the low-rank layer: it needs an rk "
                             "head with a rank")
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
                nn.Linear(hidden_size, rank, bias=rank_bias), nn.Linear(rank, num_models)
            )
        else:
            self.head = nn.Linear(hidden_size, num_models)
        self.eta_head: nn.Module | None = None
        if eta_downsize:
            self.eta_head = nn.Sequential(self.head[0], nn.Linear(rank, 1))
        elif head_type in ("rk", "ba"):
            self.eta_head = nn.Linear(hidden_size, 1)
        self.gamma_head = nn.Linear(hidden_size, 1) if head_type == "ba" else None

    @property
    def output_layer(self) -> nn.Linear:
        return self.head[-1] if isinstance(self.head, nn.Sequential) else self.head

    @property
    def eta_output_layer(self) -> nn.Linear | None:
        if isinstance(self.eta_head, nn.Sequential):
            return self.eta_head[-1]
        return self.eta_head

    def parts(self, pooled: torch.Tensor):
        """``(coefs [B, M], eta [B] | None, gamma [B] | None)`` as the layers give them."""
        coefs = self.head(pooled)
        eta = self.eta_head(pooled).squeeze(-1) if self.eta_head is not None else None
        gamma = self.gamma_head(pooled).squeeze(-1) if self.gamma_head is not None else None
        return coefs, eta, gamma

    def forward(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        coefs, eta, gamma = self.parts(pooled)
        if gamma is not None:  # ba: coefficients relative to the learned reference strength
            coefs = coefs - gamma.unsqueeze(-1)
        return coefs, eta

    @torch.no_grad()
    def initialise(
        self,
        scheme: str = "normal",
        bias: torch.Tensor | None = None,
        eta: float | None = None,
        std: float = 0.02,
    ) -> None:
        """``scheme``: one of :data:`HEAD_INITS` (see the module's notes): ``zeros`` (start
        exactly at the bias), ``normal`` (small noise, ``std``), ``xavier``, or the
        reference's ``reset_params``, ``he_unif``, ``xavier_unif``, ``tiny_normal``. Every
        bias starts at 0; ``bias`` (e.g. the marginal leaderboard) and ``eta`` then set the
        starting point, so training starts from the baseline."""
        if scheme not in HEAD_INITS:
            raise ValueError(f"unknown head init {scheme!r}; expected one of {HEAD_INITS}")
        layers = [m for m in self.modules() if isinstance(m, nn.Linear)]
        for layer in layers:
            if scheme == "zeros" and layer is self.output_layer:
                nn.init.zeros_(layer.weight)
            elif scheme in ("xavier", "xavier_unif"):
                nn.init.xavier_uniform_(layer.weight)
            elif scheme == "reset_params":
                layer.reset_parameters()
            elif scheme == "he_unif":
                nn.init.kaiming_uniform_(layer.weight, nonlinearity="sigmoid")
            elif scheme == "tiny_normal":
                nn.init.kaiming_normal_(layer.weight)
            else:
                nn.init.normal_(layer.weight, std=std)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        if scheme == "zeros":
            for extra in (self.eta_output_layer, self.gamma_head):
                if extra is not None:
                    nn.init.zeros_(extra.weight)
        if bias is not None:
            self.output_layer.bias.copy_(torch.as_tensor(bias, dtype=self.output_layer.bias.dtype))
        if eta is not None and self.eta_head is not None:
            self.eta_output_layer.bias.fill_(float(eta))
