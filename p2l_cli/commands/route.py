"""`p2l route` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def route() -> None:
    """Not written yet."""
    raise UserError("p2l route is not written yet")
