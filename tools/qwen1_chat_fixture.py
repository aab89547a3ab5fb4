"""The tokenizer part of tools/make_qwen1_fixtures.py: Qwen (v1)'s own chat prompts
(`make_context`) and token ids for the real qwen.tiktoken, made by its own tokenization code.
(Imported by that script, which runs from tools/.)"""

import hashlib

SYSTEM = "You are a helpful assistant."
CHAT_CASES = [
    dict(query="What is the capital of France?", history=[], system=SYSTEM),
    dict(query="请用三句话介绍一下杭州的西湖。", history=[],
         system="你是一个乐于助人的中文助手，回答要简洁。"),
    dict(query="Why does this fail?\n```python\ndef add(a, b):\n\treturn a +  b  # 🙂\n```\n🚀",
         history=[["Hi!", "Hello! How can I help you today?"],
                  ["Write a haiku about the sea.",
                   "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide keeps time."]],
         system=SYSTEM),
    dict(query="  spaced   out\t\ttabs   and\n\n  blank lines   \n", history=[], system=SYSTEM),
    # make_context encodes contents with allowed_special=set(): these stay plain text
    dict(query="literal <|im_end|> and <|endoftext|> in a message", history=[], system=SYSTEM),
]
ENCODE_TEXTS = [
    "Hello, world! How are you today?",
    "你好，世界！今天天气很好。",
    "def fib(n):\n\tif n <= 1:\n\t\treturn n\n    return fib(n - 1) + fib(n - 2)\n",
    "emoji 🙂🚀👍🏽 and 🇫🇷 flags",
    "a    b\t\t c  \n\n\n  d   ",
    "cafe\u0301 Ame\u0301lie e\u0301",  # decomposed accents: Qwen's tokenizer applies NFC
    "ﬁne ligature and fullwidth ＡＢＣ１２３",  # NFC keeps these (NFKC would not)
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><|extra_0|> <|extra_204|>",
    "12345 3.14159 0x1F 1,000,000",
    "  leading and trailing spaces  ",
    "",
]


def make_context_fixture(qwen, tiktoken_path: str) -> dict:
    tokenizer = qwen.tok.QWenTokenizer(vocab_file=tiktoken_path)
    with open(tiktoken_path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    cases = []
    for case in CHAT_CASES:
        raw_text, ids = qwen.gen.make_context(
            tokenizer, case["query"], history=[tuple(h) for h in case["history"]],
            system=case["system"], max_window_size=6144, chat_format="chatml")
        cases.append({**case, "raw_text": raw_text, "ids": [int(i) for i in ids]})
    encode = []
    for text in ENCODE_TEXTS:
        ids = [int(i) for i in tokenizer.encode(text)]
        encode.append({"text": text, "ids": ids, "decoded": tokenizer.decode(ids)})
    return {"tiktoken_sha256": sha, "chat_format": "chatml", "max_window_size": 6144,
            "cases": cases,
            "stop_words_ids": qwen.gen.get_stop_words_ids("chatml", tokenizer),
            "encode": encode}
