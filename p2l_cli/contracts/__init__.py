"""The file contracts every command shares, one module each: battles (votes and their
winner spellings), prompts (user turns), predictions (coefficients with their ``p2l``
metadata) and costs (per-model prices). Each reader accepts the same spellings and raises
the same errors (:class:`p2l_cli.errors.UserError`, a ``ValueError``) wherever it is used."""
