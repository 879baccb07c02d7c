"""`p2l predict` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def predict() -> None:
    """Not written yet."""
    raise UserError("p2l predict is not written yet")
