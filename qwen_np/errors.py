"""The errors a user can cause, one type per kind.

Every message names the file (and the tensor or key, where there is one) and says what is
wrong, on one line, so that the CLI can print it as it is and exit non-zero. The API raises
the same types: bad input is always a `QwenNpError`, and anything else that escapes is a bug
(the CLI lets those keep their traceback).
"""


class QwenNpError(Exception):
    """Base of every error qwen-np raises on purpose (bad input, not a bug).

    The message is kept to one line even when it quotes a name read from a file: control
    characters (a newline in a tensor name, say) are written as escapes."""

    def __init__(self, message: str = ""):
        super().__init__(one_line(str(message)))


def one_line(text: str) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class UnsupportedModel(QwenNpError):
    """The checkpoint is valid, but of an architecture or option this version cannot run."""


class FormatError(QwenNpError):
    """The file is missing, unreadable, truncated, or disagrees with itself (shapes, names,
    dtypes, offsets, value types)."""


class BackendUnavailable(QwenNpError):
    """A backend was asked for whose package is not installed, or that does not exist."""


class InputError(QwenNpError):
    """An argument is out of range: a token id outside the vocabulary, no prompt tokens, a
    negative count."""


class CacheFull(QwenNpError):
    """The KV cache has no room for the positions asked for (its size is fixed at creation)."""


def short_repr(value) -> str:
    """A value read from a file, for an error message: one line, at most 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
