"""Exceptions that the command line turns into exit codes."""


class UserError(ValueError):
    """Bad usage or bad input: the CLI prints the message on one line and exits with code 2.

    The message must name what is wrong: the file, the row or line, or the option. It is a
    ``ValueError``, so library code that checks its data raises one kind of error.
    """
