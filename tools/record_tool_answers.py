"""Record the real default model's answers to questions given two tools, for the tool-call
parser's tests (tests/fixtures/chat_templates/recorded_tool_answers.json).

Qwen2.5-Coder-0.5B-Instruct (the Q4_K_M GGUF, `qwen-np fetch`), greedy, through the Batcher:
each question once free (tool_choice "auto": what the model writes by itself) and once under
the tool-call grammar (tool_choice "required"). The text is the decode of the generated ids
without the final stop token.

    python tools/record_tool_answers.py
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "chat_templates",
                   "recorded_tool_answers.json")
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 12},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The time in a zone.",
    "parameters": {"type": "object", "properties": {"zone": {"type": "string", "maxLength": 8}},
                   "required": ["zone"], "additionalProperties": False}}}
QUESTIONS = ["What's the weather in Paris right now, in celsius?", "What time is it in Tokyo?",
             "What is the weather in Berlin and the time in New York?", "Tell me a joke."]


def main() -> int:
    import qwen_np
    from qwen_np.apps.fetch import default_model_path
    from qwen_np.runtime.batch import Batcher
    from qwen_np.runtime.constraint import GrammarCompiler
    model = qwen_np.load(default_model_path(), backend="numba")
    grammars = GrammarCompiler(model.tokenizer, model.config.vocab_size, model.stop_ids())
    batcher = Batcher(model, max_batch=8, context=1024)
    runs = []
    for question in QUESTIONS:
        ids = model.chat_prompt_ids([{"role": "user", "content": question}], [WEATHER, TIME])
        for choice in ("auto", "required"):
            constraint = grammars.tool_calls([WEATHER, TIME]) if choice == "required" else None
            runs.append((question, choice, batcher.submit(ids, 160, constraint=constraint)))
    batcher.start()
    while any(r.finish is None for _, _, r in runs):
        time.sleep(0.01)
    batcher.close()
    stop = set(model.stop_ids())
    records = []
    for question, choice, r in runs:
        ids = r.generated[:-1] if r.generated and r.generated[-1] in stop else r.generated
        records.append({"question": question, "tool_choice": choice, "finish": r.finish,
                        "text": model.tokenizer.decode(ids)})
    with open(OUT, "w", encoding="utf-8") as f:
        json.dump({"model": os.path.basename(default_model_path()), "tools": [WEATHER, TIME],
                   "answers": records}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
