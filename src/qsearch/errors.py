"""The one exception type for user mistakes.

Anything a user can get wrong (an unknown option, a missing dataset, bits out of range, a
corrupt checkpoint) raises :class:`UserError`. The CLI prints its message on one line and
exits with :data:`USER_ERROR_EXIT_CODE`; programming errors keep their tracebacks.
"""

USER_ERROR_EXIT_CODE = 2


class UserError(Exception):
    """A problem with the user's input, reported as one line and exit code 2."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))
