"""Mixed precision: which tensors `qwen-np quantize` writes at other widths than `--bits`.

    --keep 8:lm_head,v_proj,down_proj   these at 8 bits
    --keep 16:layers.0.                  these not quantized (float16)

A rule is WIDTH:NAMES, NAMES a comma-separated list. A name is an alias (`lm_head`, `embed`)
or a fragment of a module's Hugging Face name (`down_proj`, `layers.0.`, `mlp.experts.3.`),
matched as a substring. Rules are tried in the order given; the first that names a module
decides its width, else `--bits` does. This is how llama.cpp's Q4_K_M spends its bytes: the
tensors whose error costs most (the LM head, attention's V, the MLP's down projection) get more
bits.

In a GPTQ checkpoint the rules become GPTQModel's `dynamic` overrides (a regular expression per
rule, "+:" with its bits, "-:" for a module left in float16) and `lm_head: true` when the LM
head is quantized, as GPTQModel writes them. The token embedding cannot be quantized there: the
format has no quantized embedding (a row lookup, not a matrix product), so asking for it is
refused with the GGUF output named instead, where every tensor has its own type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from qwen_np.errors import InputError

ALIASES = {"lm_head": "lm_head", "embed": "model.embed_tokens"}
WIDTHS = (4, 8, 16)              # 16: left unquantized, stored as float16


@dataclass(frozen=True)
class KeepRule:
    bits: int                    # 4, 8, or 16 (not quantized)
    names: tuple[str, ...]       # module-name fragments, aliases resolved

    def matches(self, module: str) -> bool:
        return any(name_matches(n, module) for n in self.names)


def name_matches(name: str, module: str) -> bool:
    """An alias names its module exactly; any other name is a fragment of the module's name."""
    return module == name if name in ALIASES.values() else name in module


def parse_keep(specs) -> tuple[KeepRule, ...]:
    """`--keep` values ("8:lm_head,down_proj") -> rules; errors name the option."""
    rules = []
    for spec in specs or ():
        width, sep, names = spec.partition(":")
        if not sep or not width.strip().isdigit() or int(width) not in WIDTHS:
            raise InputError(f"--keep {spec!r}: expected WIDTH:NAMES with WIDTH one of "
                             f"{', '.join(map(str, WIDTHS))} (16 = not quantized), e.g. "
                             f"--keep 8:lm_head,down_proj")
        parts = tuple(ALIASES.get(n.strip(), n.strip()) for n in names.split(","))
        if not all(parts):
            raise InputError(f"--keep {spec!r}: an empty name")
        rules.append(KeepRule(int(width), parts))
    return tuple(rules)


def width_of(rules, module: str, default: int) -> int:
    """The width the first matching rule gives `module` (a name without `.weight`)."""
    for rule in rules:
        if rule.matches(module):
            return rule.bits
    return default


def check_gptq_rules(rules, modules, tied: bool) -> None:
    """Refuse what a GPTQ checkpoint cannot hold, and rules that name nothing."""
    for rule in rules:
        if ALIASES["embed"] in rule.names and rule.bits != 16:
            raise InputError(f"--keep {rule.bits}:embed: a GPTQ checkpoint holds no quantized "
                             f"embedding (it stays float16); write a GGUF file instead "
                             f"(qwen-np quantize SRC DST.gguf --type ...), whose token_embd "
                             f"takes any block type")
        for n in rule.names:
            if n == ALIASES["embed"] or (n == "lm_head" and tied):
                continue
            if not any(name_matches(n, m) for m in modules):
                raise InputError(f"--keep {rule.bits}:{n}: names no quantizable matrix of "
                                 f"this model (e.g. {modules[0]})")


def gptq_dynamic(rules) -> dict:
    """GPTQModel's `dynamic` for the rules: {"+:regex": {"bits": b}} or {"-:regex": {}}, in
    the rules' order (GPTQModel, like width_of, takes the first match; so a rule at the
    default width is written too, or a later rule would take its modules)."""
    dynamic = {}
    for rule in rules:
        for n in rule.names:
            if n == ALIASES["embed"]:
                continue
            regex = re.escape(n) if n in ALIASES.values() else ".*" + re.escape(n) + ".*"
            if rule.bits == 16:
                dynamic["-:" + regex] = {}
            else:
                dynamic["+:" + regex] = {"bits": rule.bits}
    return dynamic
