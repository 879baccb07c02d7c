"""`p2l push` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def push() -> None:
    """Not written yet."""
    raise UserError("p2l push is not written yet")
