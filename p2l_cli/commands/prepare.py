"""`p2l prepare` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def prepare() -> None:
    """Not written yet."""
    raise UserError("p2l prepare is not written yet")
