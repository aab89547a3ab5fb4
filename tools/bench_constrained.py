"""A constrained row does not slow the free rows decoded beside it.

The real default model (Qwen2.5-Coder-0.5B Q4_K_M) on the numba backend, through the Batcher
(the server's loop without HTTP): 4 free rows (greedy chat answers) and a fifth row that is
either free too (sampled, temperature 1) or constrained by a JSON schema (sampled the same
way, llguidance's mask applied). Each round decodes every row for --tokens tokens; rounds
alternate (free fifth row, constrained fifth row, ...). Printed: the median milliseconds per
decode step of the batch, each kind, and whether the 4 free rows' tokens were the same in
every round (they must be: a row's tokens depend on its own logits only).

    python tools/bench_constrained.py [--rounds 6] [--tokens 48]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

SCHEMA = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 60},
    "tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "maxItems": 8},
    "size": {"type": "integer"}}, "required": ["title", "tags", "size"]}
QUESTIONS = ["Write a haiku about the sea.", "Explain recursion briefly.",
             "What is a hash map?", "Name three sorting algorithms."]


def one_round(model, grammars, constrained: bool, tokens: int):
    from qwen_np.model.sampling import Sampling
    from qwen_np.runtime.batch import Batcher
    batcher = Batcher(model, max_batch=5, context=512)
    free = [batcher.submit(model.chat_prompt_ids([{"role": "user", "content": q}]), tokens,
                           stop_ids=[]) for q in QUESTIONS]
    fifth_ids = model.chat_prompt_ids([{"role": "user", "content": "A record as JSON."}])
    fifth = batcher.submit(fifth_ids, tokens, Sampling(temperature=1.0, seed=1), stop_ids=[],
                           constraint=grammars.json_schema(SCHEMA) if constrained else None)
    requests = free + [fifth]
    t0 = time.perf_counter()
    batcher.start()
    while any(r.finish is None for r in requests):
        time.sleep(0.002)
    seconds = time.perf_counter() - t0
    batcher.close()
    steps = max(len(r.generated) for r in requests)
    return seconds / steps * 1e3, [list(r.generated) for r in free]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--tokens", type=int, default=48)
    args = p.parse_args()
    import qwen_np
    from qwen_np.apps.fetch import default_model_path
    from qwen_np.runtime.constraint import GrammarCompiler
    model = qwen_np.load(default_model_path(), backend="numba")
    grammars = GrammarCompiler(model.tokenizer, model.config.vocab_size, model.stop_ids())
    grammars.json_schema(SCHEMA)                     # the engine's vocabulary, built once
    one_round(model, grammars, False, 4)             # compiled kernels, warm caches
    times, outputs = {False: [], True: []}, {False: [], True: []}
    for _ in range(args.rounds):
        for constrained in (False, True):
            ms, free = one_round(model, grammars, constrained, args.tokens)
            times[constrained].append(ms)
            outputs[constrained].append(free)
    same = all(o == outputs[False][0] for o in outputs[False] + outputs[True])
    free_ms, constrained_ms = statistics.median(times[False]), statistics.median(times[True])
    print("| fifth row | ms per batch step (median of %d) |" % args.rounds)
    print("| --- | ---: |")
    print(f"| free (sampled) | {free_ms:.1f} |")
    print(f"| JSON schema (sampled, masked) | {constrained_ms:.1f} |")
    print(f"ratio constrained / free: {constrained_ms / free_ms:.3f}; the 4 free rows' tokens "
          f"{'identical' if same else 'DIFFER'} in all {2 * args.rounds} rounds")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
