"""`p2l demo` (placeholder: being written in this session; replaced before landing)."""

from p2l_cli.errors import UserError


def demo() -> None:
    """Not written yet."""
    raise UserError("p2l demo is not written yet")
