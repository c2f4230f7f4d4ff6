"""A word-level tokenizer for the world's closed vocabulary, as a PreTrainedTokenizerFast.

Saved beside the LM so that ``AutoTokenizer.from_pretrained(dir)`` gives it back; like
Llama's it prepends ``<s>`` and leaves ``</s>`` to the caller.
"""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from .text import BOS_TOKEN, EOS_TOKEN, IMAGE_TOKEN, PAD_TOKEN, PLACEHOLDER_TOKEN, UNK_TOKEN, vocabulary

__all__ = ["build_tokenizer"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The world tokenizer: ids follow ``vocabulary()`` order, so it is the same every build."""
    vocab = {w: i for i, w in enumerate(vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    bos = vocab[BOS_TOKEN]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A $B", special_tokens=[(BOS_TOKEN, bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        additional_special_tokens=[IMAGE_TOKEN, PLACEHOLDER_TOKEN],
        padding_side="right",
        model_max_length=128,
    )
    return fast
