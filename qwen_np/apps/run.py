"""`qwen-np run` (complete one prompt) and `qwen-np chat` (turns in the terminal, one KV cache
across them), streaming the text as it is decoded."""

from __future__ import annotations

import sys

from qwen_np.apps.loading import load_model, sampling_of


class TextStream:
    """Prints tokens as text as they arrive, holding back bytes of an unfinished UTF-8 char."""

    def __init__(self, tokenizer, hide_ids=(), out=sys.stdout):
        self.tokenizer, self.hide, self.out = tokenizer, set(hide_ids), out
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
    from qwen_np.runtime.chat import chat_prompt_ids
    from qwen_np.runtime.tokenizer import DEFAULT_SYSTEM_BY_MODEL_TYPE
    model = load_model(args)
    tok = model.tokenizer
    if args.chat:
        system = args.system if args.system is not None else \
            DEFAULT_SYSTEM_BY_MODEL_TYPE.get(model.config.model_type)
        ids = chat_prompt_ids(tok, model.config.model_type, args.prompt, system)
    else:
        ids = tok.encode(args.prompt)
        sys.stdout.write(args.prompt)
    stream = TextStream(tok, model.stop_ids())
    model.generate(ids, max_new_tokens=args.max_new_tokens, sampling=sampling_of(args),
                   stream=stream)
    stream.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    from qwen_np.runtime.chat import chat_prompt_ids, chat_token_ids, next_turn_ids
    from qwen_np.runtime.tokenizer import DEFAULT_SYSTEM_BY_MODEL_TYPE
    model = load_model(args)
    tok, cfg = model.tokenizer, model.config
    system = args.system if args.system is not None else \
        DEFAULT_SYSTEM_BY_MODEL_TYPE.get(cfg.model_type)
    _, im_end = chat_token_ids(tok)
    stop = model.stop_ids()
    cache, last = None, None
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
            cache, last = None, None
            continue
        if not msg:
            continue
        if cache is None:  # first turn: the whole ChatML prefix
            cache = model.new_cache(args.context)
            ids = chat_prompt_ids(tok, cfg.model_type, msg, system)
        else:  # later turns: close the last answer, then only the new user turn
            ids = [last] if last == im_end else [last, im_end]
            ids += next_turn_ids(tok, cfg.model_type, msg)
        room = cache.max_tokens - cache.length - len(ids)
        if room < 1:
            print("(the conversation fills the context; /reset to start over)", file=sys.stderr)
            continue
        stream = TextStream(tok, stop)
        new = model.generate(ids, max_new_tokens=min(args.max_new_tokens, room), cache=cache,
                             stream=stream, sampling=sampling_of(args))
        stream.flush()
        last = new[-1]
        print()
    return 0
