"""The one exception type users see, and the CLI's exit codes."""

EXIT_OK = 0
#: verify found a mismatch, check found a problem.
EXIT_FINDINGS = 1
#: bad input or usage: the message says what to fix.
EXIT_INPUT = 2


class SurgeonError(Exception):
    """A problem the user can fix.

    The message is one line: what is wrong, where (file, node or tensor), and what to do.
    """
