"""The two kinds of failure a user sees, mapped to the exit codes in docs/interfaces.md.

A UserError is a usage mistake (unknown model, bad flag, unreadable config): exit 2.
A DataError means the data or a check failed (validation problems, a failed gate): exit 1.
The CLI prints the message on one line; tracebacks only with --verbose.
"""


class ProtegeError(Exception):
    exit_code = 1


class UserError(ProtegeError):
    exit_code = 2


class DataError(ProtegeError):
    exit_code = 1
