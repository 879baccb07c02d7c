"""p2l: Prompt-to-Leaderboard (Frick et al., 2025) as a command-line toolkit and library."""

__version__ = "0.1.0.dev0"
