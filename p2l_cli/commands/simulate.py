"""`p2l simulate` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def simulate() -> None:
    """Not written yet."""
    raise UserError("p2l simulate is not written yet")
