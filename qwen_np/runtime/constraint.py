"""Constrained decoding: a grammar decides which tokens may come next, so that every sampled
token keeps the output a prefix of something the grammar accepts.

The grammar engine is llguidance (github.com/guidance-ai/llguidance, as vLLM, SGLang and
llama.cpp use it). It compiles a JSON Schema or a Lark grammar against the tokenizer's
vocabulary and, after each token, writes the tokens that may follow as a bitmask:

    mask: int32 words [ceil(V / 32)]; word w, bit b (least significant first) is token 32w + b
          1: the token may come next;  0: it may not

Three grammars, each for a field of OpenAI's API:

    json_object()        any JSON object             response_format {"type": "json_object"}
    json_schema(schema)  a value the schema accepts  response_format {"type": "json_schema"}
    tool_calls(tools)    Qwen's (Hermes) tool calls  tool_choice "required" or a named function

JSON is written as json.dumps writes it: ", " between items, ": " after keys, no other
whitespace (llguidance's whitespace_flexible off, with those separators). That is the form
Qwen was trained on for tool calls (its templates write them with tojson, that is json.dumps)
and a common one for JSON answers; and it cannot be padded without end: with free whitespace
(vLLM's default) a model that drifts into newlines or tabs never reaches the closing brace
within max_tokens. GrammarCompiler(whitespace_flexible=True) allows any whitespace between
tokens instead.

The end of the output: llguidance's tokenizer is given the model's stop ids as its EOS tokens,
and allows them exactly when the output so far is complete. Once nothing but a stop token can
follow (a top-level JSON value's last brace: llguidance allows no whitespace after it),
`Constraint.finished` is true and the batcher ends the row ("stop") at once, without a step
to sample the stop token. An output cut short by max_tokens ends "length" and is a prefix,
not a whole value, as OpenAI's API reports it.

Building llguidance's tokenizer (its token trie) takes 1.2-1.5 s for Qwen2.5's 151,936 ids
(and about 85 MiB), holding the GIL throughout, so a GrammarCompiler builds it once, at its
first constrained request (touch `ll_tokenizer` at start to have it sooner); the server makes
one GrammarCompiler per model. Each request gets a Constraint of its own (the matcher's
state, compiled in a few ms). Per token, on that vocabulary, a constrained row costs about
0.1 ms for the engine's mask and 0.1 ms for the masked copy of its logits; free rows cost
nothing more.
"""

from __future__ import annotations

import json
import threading

import numpy as np

from qwen_np.errors import InputError, QwenNpError
from qwen_np.formats.files import first_line_of
from qwen_np.runtime.tokenizer import Tokenizer

# Qwen2.5's and Qwen3's tool-call tags (their chat templates' "Hermes" format); the fixture
# tokenizers have no such tokens, and then the tags are plain text
TOOL_CALL_OPEN, TOOL_CALL_CLOSE = "<tool_call>", "</tool_call>"


class GrammarCompiler:
    """One model's grammars, compiled into a Constraint per request (module docstring)."""

    def __init__(self, tokenizer: Tokenizer, vocab_size: int, stop_ids,
                 whitespace_flexible: bool = False):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size      # the model's (config): may exceed the tokenizer's
        self.stop_ids = sorted({int(i) for i in stop_ids})
        self.whitespace_flexible = whitespace_flexible
        self._ll_tokenizer = None
        self._building = threading.Lock()    # requests compile in the server's threads

    @property
    def ll_tokenizer(self):
        """llguidance's tokenizer, built at first use. Ids from the tokenizer's size up to
        vocab_size (the embedding's padding rows) stand for no bytes, so no grammar allows
        them; the stop ids are its EOS tokens."""
        with self._building:
            if self._ll_tokenizer is None:
                import llguidance
                self._ll_tokenizer = llguidance.LLTokenizer(
                    self.tokenizer.to_json(), n_vocab=self.vocab_size, eos_token=self.stop_ids)
            return self._ll_tokenizer

    def json_object(self) -> "Constraint":
        """Any JSON object."""
        return self.json_schema({"type": "object"})

    def json_schema(self, schema, what: str = "the JSON schema") -> "Constraint":
        """A JSON value that `schema` (a dict, or its JSON text) accepts. A schema the engine
        cannot compile is an InputError naming `what`."""
        from llguidance import LLMatcher
        try:
            grammar = LLMatcher.grammar_from_json_schema(schema, defaults=self.json_options())
        except (ValueError, TypeError) as e:
            raise InputError(f"{what} is not a JSON object ({first_line_of(e)})") from None
        return self.constraint(grammar, what)

    def tool_calls(self, tools: list, name: str | None = None,
                   parallel: bool = True) -> "Constraint":
        """Tool calls as Qwen's chat templates write them, and nothing else:

            <tool_call>
            {"name": "<a tool's name>", "arguments": <an object its parameters accept>}
            </tool_call>

        one call, or (parallel) one or more separated by a newline. `tools` is OpenAI's list
        ({"type": "function", "function": {"name", "parameters"}}); with `name` (tool_choice
        naming a function) every call is to that tool. The tags are single tokens where the
        tokenizer has them as such (Qwen2.5, Qwen3), else text."""
        schemas = tool_parameter_schemas(tools)
        if name is not None:
            if name not in schemas:
                raise InputError(f"tool_choice names the function {name!r}, which is not "
                                 f"one of the tools ({', '.join(map(repr, schemas))})")
            schemas = {name: schemas[name]}
        calls = [{"type": "object", "additionalProperties": False,
                  "properties": {"name": {"const": n}, "arguments": parameters},
                  "required": ["name", "arguments"]} for n, parameters in schemas.items()]
        body = {"x-guidance": self.json_options(), "anyOf": calls}
        lark = "\n".join([
            'start: call ("\\n" call)*' if parallel else "start: call",
            f'call: {self.tag(TOOL_CALL_OPEN)} "\\n" body "\\n" {self.tag(TOOL_CALL_CLOSE)}',
            f"body: %json {json.dumps(body)}"])
        from llguidance import LLMatcher
        try:
            return self.constraint(LLMatcher.grammar_from_lark(lark), "the tools")
        except InputError:
            for n, parameters in schemas.items():    # name the tool whose schema fails
                self.json_schema(parameters, f"the parameters of tool {n!r}")
            raise

    def json_options(self) -> dict:
        if self.whitespace_flexible:
            return {"whitespace_flexible": True}
        return {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

    def tag(self, text: str) -> str:
        """A Lark item for `text`: its special token by id if the tokenizer has one (llguidance
        matches a special token only as itself, never as the bytes of its text), else the
        text as a string."""
        token = self.tokenizer.token_id(text)
        if token is not None and self.ll_tokenizer.is_special_token(token):
            return f"<[{token}]>"
        return json.dumps(text)

    def constraint(self, grammar: str, what: str) -> "Constraint":
        """A Constraint at the start of `grammar`; a grammar llguidance cannot compile is an
        InputError naming `what` and the engine's reason."""
        from llguidance import LLMatcher
        matcher = LLMatcher(self.ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise InputError(f"{what}: the grammar engine cannot compile it "
                             f"({first_line_of(matcher.get_error())})")
        return Constraint(matcher, self.ll_tokenizer.vocab_size, self.stop_ids)


class Constraint:
    """One request's place in its grammar: which tokens may come next, and `accept` for the
    one chosen. Used from one thread at a time (the batcher's loop)."""

    def __init__(self, matcher, n_vocab: int, stop_ids):
        self.matcher = matcher
        self.stop_ids = frozenset(stop_ids)
        self.words = np.zeros((n_vocab + 31) // 32, dtype=np.int32)   # the mask, drawn above

    def allowed(self, vocab_size: int) -> np.ndarray:
        """bool [vocab_size]: the tokens that may come next (ids past llguidance's vocabulary,
        if any, may not)."""
        self.matcher.unsafe_compute_mask_ptr(self.words.ctypes.data, self.words.nbytes)
        bits = np.unpackbits(self.words.view(np.uint8), bitorder="little")
        allowed = np.zeros(vocab_size, dtype=bool)
        n = min(vocab_size, bits.size)
        allowed[:n] = bits[:n]
        return allowed

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """A copy of one row of logits [V] with the tokens that may not come next at -inf
        (the row itself, perhaps a view of the whole batch's logits, is left as it is)."""
        logits = np.asarray(logits)
        return np.where(self.allowed(len(logits)), logits, np.array(-np.inf, logits.dtype))

    def accept(self, token: int) -> None:
        """Move past `token`. A token the grammar refuses (one outside the mask) or the
        engine failing (a limit of its own) is a QwenNpError: the request ends "error"."""
        if self.matcher.is_stopped() and token in self.stop_ids:
            return
        if not self.matcher.consume_token(int(token)):
            raise QwenNpError(f"the grammar engine refused token {int(token)} "
                              f"({first_line_of(self.matcher.get_error())})")

    @property
    def finished(self) -> bool:
        """Nothing but a stop token may follow: the output is complete."""
        return self.matcher.is_stopped()


def tool_parameter_schemas(tools) -> dict:
    """{name: parameters schema} of OpenAI's tool list; a tool without parameters takes an
    object. A malformed list is an InputError naming the tool."""
    if not isinstance(tools, list) or not tools:
        raise InputError("tools must be a non-empty list to constrain tool calls")
    schemas = {}
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str):
            raise InputError(f"tools[{i}] has no function name")
        parameters = function.get("parameters", {"type": "object"})
        if not isinstance(parameters, dict):
            raise InputError(f"tools[{i}] ({name!r}): parameters is not a JSON object")
        schemas[name] = parameters
    return schemas
