"""`qwen-np run` (complete one prompt) and `qwen-np chat` (turns in the terminal, one KV cache
across them), streaming the text as it is decoded. A sampling flag left out is the model's
generation_config.json setting, as in transformers' generate and vLLM (Qwen2.5-Instruct's
samples at temperature 0.7); a model that sets none (a GGUF) decodes greedily."""

from __future__ import annotations

import sys

from qwen_np.apps.loading import load_model, sampling_of


class TextStream:
    """Prints tokens as text as they arrive, holding back bytes of an unfinished UTF-8 char."""

    def __init__(self, tokenizer, hide_ids=(), out=None):
        self.tokenizer, self.hide = tokenizer, set(hide_ids)
        self.out = sys.stdout if out is None else out     # (looked up now, not at import)
        self.pending: list[int] = []

    def __call__(self, token: int):
        if token in self.hide:
            return
        self.pending.append(token)
        # a UTF-8 character can span tokens: wait (up to 4 tokens) until it is complete
        if not self.tokenizer.decode(self.pending).endswith("\ufffd") or len(self.pending) >= 4:
            self.flush()

    def flush(self):
        self.out.write(self.tokenizer.decode(self.pending))
        self.out.flush()
        self.pending = []


def cmd_run(args) -> int:
    model = load_model(args)
    sampling = sampling_of(args, model.generation_defaults)   # refused before any output
    tok = model.tokenizer
    if args.chat:
        ids = model.chat_prompt_ids(first_turns(args.system, args.prompt),
                                    **thinking_kwargs(args))
    else:
        ids = tok.encode(args.prompt)
        sys.stdout.write(args.prompt)
    stream = TextStream(tok, model.stop_ids())
    model.generate(ids, max_new_tokens=args.max_new_tokens, sampling=sampling,
                   stream=stream, prompt_lookup=args.prompt_lookup)
    stream.flush()
    sys.stdout.write("\n")
    return 0


def first_turns(system: str | None, query: str) -> list[dict]:
    """The system turn (when given: else the template's own default, if it has one) and the
    user's."""
    turns = [] if system is None else [{"role": "system", "content": system}]
    return turns + [{"role": "user", "content": query}]


def thinking_kwargs(args) -> dict:
    """--think / --no-think as the template's enable_thinking (Qwen3's); neither: the
    template's default."""
    return {} if args.think is None else {"enable_thinking": args.think}


def cmd_chat(args) -> int:
    """Each turn the whole conversation is rendered again by the chat template (so Qwen3's
    template drops the thinking of earlier answers, as it does for transformers), and only
    what differs from what the KV cache holds is run: the cache is cut back to the longest
    common prefix of its tokens and the new prompt's."""
    model = load_model(args)
    tok = model.tokenizer
    stop = model.stop_ids()
    sampling = sampling_of(args, model.generation_defaults)
    kwargs = thinking_kwargs(args)
    cache, cached, messages = None, [], []       # cached: the ids whose K/V the cache holds
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        msg = line.strip()
        if msg in ("/exit", "/quit"):
            break
        if msg == "/reset":
            cache, cached, messages = None, [], []
            continue
        if not msg:
            continue
        turns = messages + [{"role": "user", "content": msg}] if messages else \
            first_turns(args.system, msg)
        ids = model.chat_prompt_ids(turns, **kwargs)
        if cache is None:
            cache = model.new_cache(args.context)
        keep = min(common_prefix_length(cached, ids), len(ids) - 1)   # one token to run
        room = cache.max_tokens - keep - (len(ids) - keep)
        if room < 1:
            print("(the conversation fills the context; /reset to start over)", file=sys.stderr)
            continue
        cache.length, cached = keep, cached[:keep]
        stream = TextStream(tok, stop)
        new = model.generate(ids[keep:], max_new_tokens=min(args.max_new_tokens, room),
                             cache=cache, stream=stream, sampling=sampling,
                             prompt_lookup=args.prompt_lookup, cached_ids=ids[:keep])
        stream.flush()
        cached = ids + new[:-1]                  # the last token was sampled, never run
        answer = new[:-1] if new and new[-1] in stop else new
        messages = turns + [{"role": "assistant", "content": tok.decode(answer)}]
        print()
    return 0


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n
