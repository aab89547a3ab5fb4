"""StopText: the generated text, released as it becomes final, ended by a stop string."""

from __future__ import annotations


class StopText:
    """The text of the tokens generated so far, released as it becomes final.

    The text is the tokenizer's decode of all the tokens so far. It is held back while it ends
    in an unfinished UTF-8 character (the decode ends in U+FFFD) and, of the rest, the tail
    that could be the start of a stop string. Once a stop string appears, the text ends just
    before its first occurrence (`stopped`). No stop string can begin inside text already
    released (its start would have been held back), so each search starts there."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.released = 0            # characters of the text released so far
        self.stopped = False

    def add(self, token: int) -> str:
        """The newly final text after one more token."""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd"):
            return ""
        return self.release(text, len(text) - stop_prefix_length(text, self.stops))

    def finish(self) -> str:
        """The rest of the text, once no token will follow."""
        text = self.tokenizer.decode(self.ids)
        return self.release(text, len(text))

    def release(self, text: str, end: int) -> str:
        found = [at for at in (text.find(s, self.released) for s in self.stops) if at >= 0]
        if found:
            end, self.stopped = min(found), True
        piece = text[self.released:end]
        self.released = max(self.released, end)
        return piece


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest tail of `text` that is the start of a stop string (and not a
    whole one)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])), default=0)
