"""The P2L model: backbone + pooling + head; building, saving and loading."""

from p2l_cli.model.checkpoint import build_p2l, load_p2l, resolve_model_dir, save_p2l
from p2l_cli.model.heads import P2LHead
from p2l_cli.model.p2l import P2LInfo, P2LModel, P2LOutput, collate, encode_prompts, pool_hidden

__all__ = [
    "P2LHead", "P2LInfo", "P2LModel", "P2LOutput", "build_p2l", "collate", "encode_prompts",
    "load_p2l", "pool_hidden", "resolve_model_dir", "save_p2l",
]
