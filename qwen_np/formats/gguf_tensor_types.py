"""Which ggml type each tensor of a GGUF file gets, as llama.cpp's llama-quantize chooses it
(`llama_tensor_get_type` in src/llama-quant.cpp).

A "pure" choice (Q4_0, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K: `llama-quantize --pure`) gives every
quantized tensor that type. The Q4_K_M mix starts from Q4_K and raises some tensors:
    output.weight (or token_embd.weight when the head is tied)   Q6_K (Q8_0 if a row is not
                                                                 a multiple of 256)
    attn_v, ffn_down of the "more bits" layers                    Q6_K
        layer i of n: i < n/8 or i >= 7n/8 or (i - n/8) % 3 == 2, where i counts these
        tensors in the file's order (llama.cpp's i_attention_wv, i_ffn_down): files written
        from sorted Hugging Face names list blk.0, blk.1, blk.10, ... so the counter is not the
        layer number
    models of exactly 8 experts: attn_v and attn_k Q8_0, attn_output Q5_K
Then a type whose block does not divide the row length falls back (tensor_type_fallback):
    Q4_K -> Q5_0   Q5_K -> Q5_1   Q6_K -> Q8_0   (and to F16 where 32 does not divide it).
Quantized tensors: 2-D and 3-D `*weight`, except norms and the MoE router (ffn_gate_inp);
the rest keep their float type (F32 here).
"""

from __future__ import annotations

import re

from qwen_np.errors import InputError

PURE_TYPES = ("Q4_0", "Q5_0", "Q8_0", "Q4_K", "Q5_K", "Q6_K")
MIXES = ("Q4_K_M",)
OUTPUT_TYPES = PURE_TYPES + MIXES
BLOCK = {"Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q8_0": 32,
         "Q4_K": 256, "Q5_K": 256, "Q6_K": 256}
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
# general.file_type (llama_ftype): a pure K type is labelled as its _S mix, as llama-quantize
# --pure labels it
FILE_TYPE = {"F32": 0, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8, "Q4_K": 14, "Q4_K_M": 15,
             "Q5_K": 16, "Q6_K": 18}
LAYER = re.compile(r"blk\.(\d+)\.")


def check_output_type(name: str) -> str:
    if name not in OUTPUT_TYPES:
        raise InputError(f"--type {name!r}: one of {', '.join(OUTPUT_TYPES)}")
    return name


def is_quantized(name: str, n_dims: int) -> bool:
    """llama-quantize's tensor_allows_quantization for the Qwen tensors."""
    return n_dims >= 2 and name.endswith("weight") and not name.endswith("_norm.weight") \
        and "ffn_gate_inp.weight" not in name


def fallback(type_name: str, row_length: int) -> str:
    """The type a row of `row_length` can hold: the wanted one, or llama.cpp's fallback."""
    if row_length % BLOCK[type_name] == 0:
        return type_name
    smaller = FALLBACK.get(type_name, type_name)
    return smaller if row_length % BLOCK[smaller] == 0 else "F16"


def use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def tensor_types(tensors: list[tuple[str, tuple[int, ...]]], choice: str, n_layers: int,
                 n_experts: int = 0) -> dict[str, str]:
    """tensors: (GGUF name, NumPy shape) in the order they are written -> {name: type name},
    "F32" for the tensors kept in float."""
    check_output_type(choice)
    names = [n for n, _ in tensors]
    tied = "output.weight" not in names
    n_attn_v = sum("attn_v.weight" in n for n in names)
    i_attn_v = i_ffn_down = 0
    out = {}
    for name, shape in tensors:
        if not is_quantized(name, len(shape)):
            out[name] = "F32"
            continue
        t = "Q4_K" if choice == "Q4_K_M" else choice
        row = shape[-1]                                     # ne[0]
        if choice == "Q4_K_M":
            if name == "output.weight" or (tied and name == "token_embd.weight"):
                t = "Q8_0" if row % 256 else "Q6_K"
            elif "attn_v.weight" in name:
                t = "Q8_0" if n_experts == 8 else "Q6_K" if use_more_bits(i_attn_v, n_attn_v) else t
                i_attn_v += 1
            elif "attn_k.weight" in name and n_experts == 8:
                t = "Q8_0"
            elif "ffn_down" in name:
                # with experts llama.cpp reads the layer from the name, else it counts
                i = int(LAYER.match(name).group(1)) if n_experts > 1 else i_ffn_down
                t = "Q6_K" if use_more_bits(i, n_layers) else t
                i_ffn_down += 1
            elif "attn_output.weight" in name and n_experts == 8:
                t = "Q5_K"
        out[name] = fallback(t, row)
    return out
