"""`p2l train` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def train() -> None:
    """Not written yet."""
    raise UserError("p2l train is not written yet")
