"""Errors every layer of the command line shares.  A module of its own so
that the commands (venet.service, venet.demo) and the parser that runs them
(venet.cli) import it without importing each other."""


class UsageError(Exception):
    """A mistake on the command line or in the environment it names: the
    `venet` command prints it as one line and exits with status 2."""
