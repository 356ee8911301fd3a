"""Tiny random models in the seed models' layouts, built offline (tests, smoke runs, the demo's fallback).

Each builder writes a directory that loads through the real ``from_pretrained`` path: a small ByteLevel BPE or
Unigram tokenizer trained on a built-in corpus with the seed model's special tokens and chat template, next to a
randomly initialised model with the seed architecture (Llama for the pair preference LM, DeBERTa-v2 + head for
PairRM). A wide ``initializer_range`` keeps the A/B logits far apart, so parity tests compare real differences.
"""

from __future__ import annotations

from pathlib import Path

import torch

LLAMA3_SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
]
# Llama-3-8B-Instruct's chat template (the pair preference LM's tokenizer uses it).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
PAIRRM_SPECIAL_TOKENS = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
PAIRRM_PREFIX_TOKENS = ["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. A B C D E F G.",
    "[CONTEXT] [RESPONSE A] [RESPONSE B] <turn> user assistant USER: Assistant: <Response 1>:",
    "Finish the following coversation in each i-th turn by filling in <Response i> with your response.",
    "hello! hi! I love you! I hate you! Thanks, you are a good guy. What is the capital of France? Paris.",
    "Explain photosynthesis in one sentence. Plants turn light, water and carbon dioxide into sugar and oxygen.",
    "Write a haiku about the sea. Waves fold into foam; the gull writes its name on wind; the tide erases.",
    "def add(a, b): return a + b  # Python code 0 1 2 3 4 5 6 7 8 9 = + - * / ( ) { } [ ] < > | _ ' \" ! ? , .",
    "Sure, here is a joke. I'm sorry, I can't help with that. Step 1: mix. Step 2: bake. The answer is 42.",
]


def train_tiny_bpe_tokenizer(vocab_size: int = 400):
    """A ByteLevel BPE tokenizer in Llama-3's shape: its special tokens, BOS, and the Llama-3 chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=LLAMA3_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = LLAMA3_CHAT_TEMPLATE
    return tokenizer


def train_tiny_unigram_tokenizer(vocab_size: int = 300, prefix_tokens: bool = True):
    """A SentencePiece-style (Metaspace + Unigram) tokenizer in DeBERTa-v3's shape with PairRM's prefix tokens
    (without them, ``prefix_tokens=False``: the backbone's own tokenizer, as llm-blender starts from);
    ``encode`` wraps text as ``[CLS] ... [SEP]`` like DeBERTa-v3."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=PAIRRM_SPECIAL_TOKENS, unk_token="[UNK]", show_progress=False
    )
    backend.train_from_iterator(CORPUS * 4, trainer=trainer)
    if prefix_tokens:
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in PAIRRM_PREFIX_TOKENS])
    cls_id, sep_id = backend.token_to_id("[CLS]"), backend.token_to_id("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token="[UNK]",
        mask_token="[MASK]",
        additional_special_tokens=PAIRRM_PREFIX_TOKENS if prefix_tokens else None,
    )


def tiny_llama_config(tokenizer, num_layers: int = 2, initializer_range: float = 0.3, **extra):
    """The tiny Llama of the test models (2 layers of 32 hidden by default), sized to ``tokenizer``; ``extra`` config
    fields on top (a head's ``num_labels``, ``tie_word_embeddings``, ...)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=initializer_range,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def build_tiny_pair_lm(path: str | Path, seed: int = 0, initializer_range: float = 0.3, num_layers: int = 2) -> Path:
    """Save a tiny random Llama pair preference LM with a Llama-3-style tokenizer to ``path``."""
    from transformers import LlamaForCausalLM

    path = Path(path)
    tokenizer = train_tiny_bpe_tokenizer()
    config = tiny_llama_config(tokenizer, num_layers, initializer_range, tie_word_embeddings=False)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# The verdict LM's chat template: the messages' contents, nothing around them and no generation prompt, so the last
# token a model reads is the last token of the last message (a judge template ending with the second response).
CONTENT_ONLY_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"


def build_tiny_verdict_lm(path: str | Path, verdicts: dict[str, str], seed: int = 0) -> Path:
    """Save a tiny Llama whose next token depends only on the last token it reads: after the last token of
    ``" " + word`` it says ``verdicts[word]`` (a one-token label), after a label its EOS; anything else is random.

    A real model for a real server (``transformers serve``) that judges by rule: with a judge template ending in
    ``{{ response_b }}`` and :data:`CONTENT_ONLY_CHAT_TEMPLATE`, the verdict is read from the second response's last
    word. Its layers add nothing to the residual stream (zero output projections), so the final hidden state is the
    last token's embedding, and the output head is set to map chosen embeddings to chosen tokens."""
    from transformers import LlamaForCausalLM

    path = Path(path)
    tokenizer = train_tiny_bpe_tokenizer()
    tokenizer.chat_template = CONTENT_ONLY_CHAT_TEMPLATE
    config = tiny_llama_config(tokenizer, num_layers=1, initializer_range=0.02, tie_word_embeddings=False)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        embeddings = torch.randn_like(model.model.embed_tokens.weight)
        model.model.embed_tokens.weight.copy_(embeddings)
        head = torch.zeros_like(model.lm_head.weight)

        def single(text: str) -> int:
            ids = tokenizer.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                raise ValueError(f"{text!r} must be one token of the tiny tokenizer, got {ids}")
            return ids[0]

        def direction(token: int) -> torch.Tensor:
            return embeddings[token] / embeddings[token].norm()

        lasts = {word: tokenizer.encode(" " + word, add_special_tokens=False)[-1] for word in verdicts}
        if len(set(lasts.values())) != len(lasts):
            raise ValueError(f"the words {sorted(verdicts)} must end in different tokens of the tiny tokenizer")
        for word, label in verdicts.items():
            last = lasts[word]
            head[single(label)] += 60 * direction(last)
            head[tokenizer.eos_token_id] += 60 * direction(single(label))
        model.lm_head.weight.copy_(head)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_pairrm(path: str | Path, seed: int = 0, initializer_range: float = 0.3, num_layers: int = 2) -> Path:
    """Save a tiny random :class:`DebertaV2PairRM` in PairRM-hf's layout (keys, config fields) to ``path``."""
    from transformers import DebertaV2Config

    from rlhf_pairs.judges.pairrm import DebertaV2PairRM

    path = Path(path)
    tokenizer = train_tiny_unigram_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in PAIRRM_PREFIX_TOKENS}
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        max_relative_positions=-1,
        type_vocab_size=0,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        n_tasks=1,
        drop_out=0.05,
        source_prefix_id=ids["<|source|>"],
        cand1_prefix_id=ids["<|candidate1|>"],
        cand2_prefix_id=ids["<|candidate2|>"],
        cand_prefix_id=ids["<|candidate|>"],
        architectures=["DebertaV2PairRM"],
    )
    torch.manual_seed(seed)
    DebertaV2PairRM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def build_tiny_reward_model(
    path: str | Path, seed: int = 0, initializer_range: float = 0.3, num_layers: int = 2, pad_token: bool = True
) -> Path:
    """Save a tiny random Bradley-Terry reward model (``LlamaForSequenceClassification``, one output) with a
    Llama-3-style tokenizer and chat template to ``path``, in the layout of ``sfairXC/FsfairX-LLaMA3-RM-v0.1`` /
    ``Skywork/Skywork-Reward-Llama-3.1-8B``. ``pad_token``: give it a pad token distinct from EOS (Llama-3.1 RMs
    pad with a reserved token); without one the judge falls back to EOS, as RewardBench does."""
    from transformers import LlamaForSequenceClassification

    path = Path(path)
    tokenizer = train_tiny_bpe_tokenizer()
    if pad_token:
        tokenizer.pad_token = "<|end_of_text|>"
    config = tiny_llama_config(
        tokenizer, num_layers, initializer_range, pad_token_id=tokenizer.pad_token_id, num_labels=1
    )
    torch.manual_seed(seed)
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
