"""Errors that the CLI shows as one line: what went wrong, with which item, and why."""


class FFEError(Exception):
    pass
