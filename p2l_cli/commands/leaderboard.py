"""`p2l leaderboard` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def leaderboard() -> None:
    """Not written yet."""
    raise UserError("p2l leaderboard is not written yet")
