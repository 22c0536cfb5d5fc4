"""Build a byte-level BPE tokenizer locally, without downloading anything.

The training corpus is generated from a seeded pseudo-language (syllables
combined into a Zipf-distributed lexicon) mixed with a small bundled English
text, so the result is deterministic for a given seed and vocabulary size.
The tokenizer is saved as ``tokenizer.json`` + ``tokenizer_config.json`` so
``transformers.AutoTokenizer.from_pretrained(dir)`` and
``tokenizers.Tokenizer.from_file(dir / "tokenizer.json")`` both load it.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

BOS, EOS, UNK, PAD = "<s>", "</s>", "<unk>", "<pad>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (UNK, BOS, EOS, PAD, *ROLE_TOKENS)
"""Special tokens in id order: ``<unk>`` = 0, ``<s>`` = 1, ``</s>`` = 2 as in Llama."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""A Zephyr-like chat template: ``<|role|>\\ncontent</s>`` per message."""

_BUNDLED_TEXT = """\
The agent serves the models placed on its node and measures every token.
Edge sites run inference close to their users: shops, factories and telco
points of presence. Each site has a few accelerators of mixed kinds, and the
fleet decides which model version runs where. Latency under load, fairness
between urgent and background work, and a bill that can be trusted are what
users feel. A request arrives, waits in a queue, is admitted into the running
batch, produces its first token, then one token per step until it stops.
Numbers such as 0 1 2 3 4 5 6 7 8 9 10 42 100 2048 3.14 and punctuation like
( ) [ ] { } , . ; : ! ? " ' - + * / = < > # @ % & appear in prompts and code.
def main(argv: list[str]) -> int:
    return 0
"""


def _syllables(rng: random.Random) -> list[str]:
    consonants = "b c d f g h j k l m n p r s t v w z ch sh th st tr pl".split()
    vowels = "a e i o u ai ea ou io".split()
    syl = [c + v for c in consonants for v in vowels] + vowels
    rng.shuffle(syl)
    return syl


def generate_corpus(n_words: int = 200_000, lexicon_size: int = 40_000, seed: int = 0) -> list[str]:
    """Return deterministic training lines: pseudo-language sentences + bundled English."""
    rng = random.Random(seed)
    syl = _syllables(rng)
    lexicon = sorted(
        {"".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(lexicon_size)}
    )
    rng.shuffle(lexicon)
    weights = [1.0 / (rank + 1) for rank in range(len(lexicon))]  # Zipf-like frequencies
    lines: list[str] = []
    words = rng.choices(lexicon, weights=weights, k=n_words)
    pos = 0
    while pos < len(words):
        n = rng.randint(4, 16)
        sentence = " ".join(words[pos : pos + n])
        lines.append(sentence[:1].upper() + sentence[1:] + rng.choice(".!?,;"))
        pos += n
    lines.extend(_BUNDLED_TEXT.splitlines() * 20)
    return lines


def build_tokenizer(vocab_size: int, out_dir: Path, seed: int = 0, model_max_length: int = 2048) -> Tokenizer:
    """Train a byte-level BPE of ``vocab_size`` tokens and save it into ``out_dir``.

    The trainer may stop below ``vocab_size`` when the corpus has no more
    merges; the returned tokenizer's ``get_vocab_size()`` is authoritative.
    """
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    n_words = max(50_000, vocab_size * 12)
    tok.train_from_iterator(generate_corpus(n_words=n_words, lexicon_size=max(2_000, vocab_size), seed=seed), trainer)
    bos_id, eos_id = tok.token_to_id(BOS), tok.token_to_id(EOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id), (EOS, eos_id)]
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": UNK,
        "pad_token": PAD,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": model_max_length,
        "chat_template": CHAT_TEMPLATE,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "unk_token": UNK, "pad_token": PAD}, indent=2) + "\n"
    )
    return tok
