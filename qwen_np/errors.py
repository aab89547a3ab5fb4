"""The errors a user can cause, one type per kind.

Every message names the file (and the tensor, where there is one) and says what is wrong, on
one line, so that the CLI can print it as it is and exit non-zero.
"""


class QwenNpError(Exception):
    """Base of every error qwen-np raises on purpose (bad input, not a bug)."""


class UnsupportedModel(QwenNpError):
    """The checkpoint is valid, but of an architecture or option this version cannot run."""


class FormatError(QwenNpError):
    """The file is missing, truncated, or disagrees with itself (shapes, names, dtypes)."""


class BackendUnavailable(QwenNpError):
    """A backend was asked for whose package is not installed, or that does not exist."""
