"""The one exception type that the CLI turns into a one-line message and a non-zero exit."""


class TokenttsError(Exception):
    """A problem with the user's input or environment, explained in one line."""
