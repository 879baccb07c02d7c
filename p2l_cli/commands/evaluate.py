"""`p2l evaluate` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def evaluate() -> None:
    """Not written yet."""
    raise UserError("p2l evaluate is not written yet")
