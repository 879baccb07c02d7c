"""p2l: Prompt-to-Leaderboard (Frick et al., 2025) as a command-line toolkit and library.

The Python API (:mod:`p2l_cli.api`) is importable from here: ``fit_leaderboard``,
``fit_style_leaderboard``, ``load_model``, ``predict_leaderboards``, ``aggregate``, ``route_prompts``, ``read_costs``
and ``extend_model``. They load on first use, so that ``p2l --help`` does not import torch.
"""

__version__ = "0.1.0.dev0"

__all__ = [
    "Model",
    "__version__",
    "aggregate",
    "extend_model",
    "fit_leaderboard",
    "fit_style_leaderboard",
    "load_model",
    "predict_leaderboards",
    "read_costs",
    "route_prompts",
]
API = frozenset(__all__) - {"__version__"}


def __getattr__(name: str):
    if name in API:
        from p2l_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'p2l_cli' has no attribute {name!r}")
