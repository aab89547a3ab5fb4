"""What the commands share: the model a command names (or the default one, fetched on first
use), its sampling settings, and a progress bar on stderr."""

from __future__ import annotations

import sys

def sampling_of(args, defaults: dict):
    """The sampling flags given; a flag left out (None) is the model's generation_config.json
    setting (`defaults`, Model.generation_defaults), else Sampling's own: greedy for a model
    whose folder sets none (a GGUF, say)."""
    from qwen_np.model.sampling import sampling_with_defaults
    return sampling_with_defaults(
        defaults, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty,
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty,
        seed=args.seed)


def load_model(args):
    from qwen_np.runtime.load import load
    path = args.model if args.model is not None else fetch_with_progress()
    return load(path, backend=args.backend, dtype=args.dtype, threads=args.threads,
                kv_cache=args.kv_cache, prepared_cache=args.prepared_cache)


def fetch_with_progress() -> str:
    from qwen_np.apps.fetch import default_model_path, fetch_default_model, is_fetched
    if not is_fetched():
        print(f"fetching the default model into {default_model_path()}", file=sys.stderr)
    bar = progress_bar("fetch")
    return fetch_default_model(progress=lambda done, total, what: bar(done, total))


def progress_bar(label: str):
    """A one-line text progress bar on stderr: `label [#####.....] 12/28`."""
    def show(done: int, total: int):
        filled = 30 * done // max(total, 1)
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}")
        if done == total:
            sys.stderr.write("\n")
        sys.stderr.flush()
    return show
