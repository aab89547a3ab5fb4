import pytest

from conftest import fixture_path
from qwen_np.runtime.tokenizer import QWEN2_DEFAULT_SYSTEM, Tokenizer, format_chatml

TOK = fixture_path("qwen2-tied-f32") + "/tokenizer.json"
TEXTS = ["def fibonacci(n):\n\treturn n", "Hello,   world!  ", "你好，世界 🙂 12345",
         "<|im_start|>user\nhi<|im_end|>\n"]

# Qwen2.5's chat template (tokenizer_config.json of Qwen/Qwen2.5-*-Instruct), the branch
# without tools, transcribed as Jinja: the independent definition format_chatml must match.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")


def test_encode_decode_match_transformers_fast_tokenizer():
    transformers = pytest.importorskip("transformers")
    theirs = transformers.PreTrainedTokenizerFast(tokenizer_file=TOK)
    ours = Tokenizer.from_file(TOK)
    for text in TEXTS:
        ids = ours.encode(text)
        assert ids == theirs.encode(text)
        assert ours.decode(ids) == theirs.decode(ids) == text


def test_special_tokens_in_text_are_single_ids():
    tok = Tokenizer.from_file(TOK)
    ids = tok.encode("<|im_start|>user")
    assert ids[0] == tok.token_id("<|im_start|>")
    assert tok.stop_ids() == [tok.token_id("<|endoftext|>"), tok.token_id("<|im_end|>")]


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hello"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "1+1?"}, {"role": "assistant", "content": "2"},
     {"role": "user", "content": "and 2+2?"}],
])
def test_chatml_matches_qwen25_template(messages):
    jinja2 = pytest.importorskip("jinja2")
    expected = jinja2.Template(QWEN25_TEMPLATE).render(messages=messages, add_generation_prompt=True)
    assert format_chatml(messages, QWEN2_DEFAULT_SYSTEM) == expected


def test_chatml_hand_worked_without_default_system():
    assert format_chatml([{"role": "user", "content": "Hi"}], None) == \
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert format_chatml([{"role": "user", "content": "Hi"}], None, add_generation_prompt=False) \
        == "<|im_start|>user\nHi<|im_end|>\n"


def test_bad_tokenizer_file(tmp_path):
    from qwen_np.errors import FormatError
    p = tmp_path / "tokenizer.json"
    p.write_text("{broken")
    with pytest.raises(FormatError, match="cannot read tokenizer"):
        Tokenizer.from_file(str(p))
