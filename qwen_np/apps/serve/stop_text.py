"""StopText: the generated text, released as it becomes final, ended by a stop string."""

from __future__ import annotations


class StopText:
    """The text of the tokens generated so far, released as it becomes final.

    The text is built a token at a time by the tokenizer's decode stream
    (Tokenizer.decode_stream: constant work per token; decoding all the ids again at every
    token grew with the square of the length), which holds back an unfinished UTF-8
    character. Of what it gives, the tail that could be the start of a stop string is held
    back here (`pending`). Once a stop string appears, the text ends just before its first
    occurrence (`stopped`). No stop string can begin inside text already released (its start
    would have been held back), so only the pending text is searched."""

    def __init__(self, tokenizer, stops: tuple[str, ...]):
        self.tokenizer, self.stops = tokenizer, stops
        self.ids: list[int] = []
        self.pending = ""            # decoded, not released: could begin a stop string
        self.released = 0            # characters released so far
        self.stopped = False
        self.step = tokenizer.decode_stream()

    def add(self, token: int) -> str:
        """The newly final text after one more token."""
        self.ids.append(token)
        piece = self.step(token)
        if not piece:
            return ""
        self.pending += piece
        return self.release(len(self.pending) - stop_prefix_length(self.pending, self.stops))

    def finish(self) -> str:
        """The rest of the text, once no token will follow (an unfinished character at the
        end written as the whole decode writes it, U+FFFD)."""
        self.pending = self.tokenizer.decode(self.ids)[self.released:]
        return self.release(len(self.pending))

    def release(self, end: int) -> str:
        """pending[:end] (or up to the first stop string), released."""
        found = [at for at in (self.pending.find(s) for s in self.stops) if at >= 0]
        if found:
            end, self.stopped = min(found), True
        piece, self.pending = self.pending[:end], self.pending[end:]
        self.released += len(piece)
        return piece


def stop_prefix_length(text: str, stops: tuple[str, ...]) -> int:
    """The length of the longest tail of `text` that is the start of a stop string (and not a
    whole one)."""
    return max((k for s in stops for k in range(min(len(s) - 1, len(text)), 0, -1)
                if text.endswith(s[:k])), default=0)
