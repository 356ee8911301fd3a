"""Pair preference LM training: data conversion, exact labels, pad token, recipes, and a real (tiny) training run."""

import math
import random
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from conftest import accuracy, load_script, synthetic_pairs, ultrafeedback_row
from safetensors.torch import load_file
from transformers import AutoTokenizer
from trl import ModelConfig, SFTConfig
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from rlhf_pairs import PairPreferenceJudge
from rlhf_pairs.configs import PairPMConfig
from rlhf_pairs.testing_utils import build_tiny_pair_lm
from rlhf_pairs.trainer.pair_pm_data import (
    Comparison,
    LabelTokens,
    RenderedContextFormatter,
    apply_overlong,
    comparisons,
    detect_schema,
    parse_comparison,
    preference_pairs,
    rlhflow_label_tokens,
    split_pairs,
    tokenize_comparison,
    tokenized_dataset,
)
from rlhf_pairs.trainer.pair_pm_trainer import check_packing, ensure_pad_token, packed_attention_leak

ROOT = Path(__file__).resolve().parents[1]
# RLHFlow's process_pair_data.py, transcribed: the plain context template and the comparison template.
PLAIN = (
    "\n{% for message in messages %}{% if loop.index0 % 2 == 0 %}\n\n<turn> user\n {{ message['content'] }}"
    "{% else %}\n\n<turn> assistant\n {{ message['content'] }}{% endif %}{% endfor %}\n\n\n"
)
TEMPLATE = "[CONTEXT] {context} [RESPONSE A] {response_A} [RESPONSE B] {response_B} \n"
MULTI_TURN = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And write a haiku about it."},
]


def rlhflow_rows(tokenizer, pairs: list[dict], seed: int) -> list[dict]:
    """RLHFlow's process_example, transcribed (one random order per pair, here seeded): the exact dataset schema."""
    rng = random.Random(seed)
    rows = []
    for pair in pairs:
        prompt = pair["prompt"]
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        context = tokenizer.apply_chat_template(messages, chat_template=PLAIN, tokenize=False)
        position = rng.randrange(2)
        responses = [pair["chosen"], pair["rejected"]]
        content = TEMPLATE.format(context=context, response_A=responses[position], response_B=responses[1 - position])
        rows.append(
            {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": "AB"[position]}]}
        )
    return rows


@pytest.fixture(scope="module")
def small_init_lm(tmp_path_factory):
    # A small init trains quickly; the session fixture's wide init is for parity tests.
    return build_tiny_pair_lm(tmp_path_factory.mktemp("models") / "tiny-lm-trainable", initializer_range=0.02)


@pytest.fixture(scope="module")
def tokenizer(tiny_pair_lm_path):
    return AutoTokenizer.from_pretrained(tiny_pair_lm_path)


# ------------------------------------------------------------------------------------------------------------------
# Exact training sequences
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss_on_eot", [False, True])
@pytest.mark.parametrize(
    "prompt,chosen,rejected",
    [
        ("hello!", "hi!", "go away"),
        (MULTI_TURN, "Seine flows slowly", "No."),
        ("Say <|eot_id|> now", "I said <|eot_id|> and [RESPONSE B] text", "no"),  # special-token text stays text
    ],
)
def test_training_sequence_is_the_inference_input_plus_the_label(
    tiny_pair_lm_path, prompt, chosen, rejected, loss_on_eot
):
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    tok = judge.tokenizer
    formatter = RenderedContextFormatter(tok, max_length=judge.formatter.max_length)
    eot = tok.convert_tokens_to_ids("<|eot_id|>") if loss_on_eot else None
    pairs, _ = preference_pairs([{"prompt": prompt, "chosen": chosen, "rejected": rejected}])
    comps = comparisons(pairs, formatter, "both")
    assert [(c.response_a, c.response_b, c.label) for c in comps] == [(chosen, rejected, "A"), (rejected, chosen, "B")]
    for comp, label_id in zip(comps, (judge.formatter.token_id_a, judge.formatter.token_id_b)):
        example = tokenize_comparison(comp, formatter, LabelTokens.judge(formatter, eot))
        target = [label_id] if eot is None else [label_id, eot]
        inference = judge.formatter.encode(prompt, comp.response_a, comp.response_b)  # what the judge reads
        assert example["input_ids"] == inference + target
        assert example["labels"] == [-100] * len(inference) + target
        assert not example["truncated"]


def test_rlhflow_rows_parse_and_tokenize_like_the_judge(tiny_pair_lm_path, tokenizer):
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    raw = synthetic_pairs(6, seed=1) + [{"prompt": MULTI_TURN, "chosen": "Seine!", "rejected": "No."}]
    rows = rlhflow_rows(tokenizer, raw, seed=3)
    pairs, stats = preference_pairs(rows)
    assert stats.pairs == len(raw) and not stats.dropped
    assert [(p.chosen, p.rejected) for p in pairs] == [(r["chosen"], r["rejected"]) for r in raw]
    formatter = RenderedContextFormatter(tokenizer)
    comps = comparisons(pairs, formatter, "both")
    assert len(comps) == 2 * len(raw)
    for comp in comps:
        pair = raw[comp.pair_index]
        example = tokenize_comparison(comp, formatter)
        assert example["input_ids"][:-1] == judge.formatter.encode(pair["prompt"], comp.response_a, comp.response_b)
        assert example["labels"][:-1] == [-100] * (len(example["labels"]) - 1)
        assert example["labels"][-1] == (
            judge.formatter.token_id_a if comp.label == "A" else judge.formatter.token_id_b
        )
        better = comp.response_a if comp.label == "A" else comp.response_b
        assert better == pair["chosen"]


def test_truncated_comparisons_keep_the_end_of_the_template_and_the_label(tokenizer):
    formatter = RenderedContextFormatter(tokenizer, max_length=40)
    comp = Comparison(
        tokenizer.apply_chat_template([{"role": "user", "content": "long " * 50}], chat_template=PLAIN, tokenize=False),
        "yes " * 30,
        "no " * 30,
        "B",
        0,
    )
    example = tokenize_comparison(comp, formatter)
    assert example["truncated"] and len(example["input_ids"]) == 41
    full = RenderedContextFormatter(tokenizer).encode(comp.context, comp.response_a, comp.response_b)
    assert example["input_ids"][-6:-1] == full[-5:]  # the template's end, where the model decides
    assert example["labels"] == [-100] * 40 + [formatter.token_id_b]


# ------------------------------------------------------------------------------------------------------------------
# Conversion, filters, orders
# ------------------------------------------------------------------------------------------------------------------


def conv(*turns):
    return [{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(turns)]


def test_preference_rows_are_filtered_like_rlhflow_and_counted():
    rows = [
        {"chosen": conv("q", "good"), "rejected": conv("q", "bad")},  # kept
        {"chosen": conv("q", "a", "q2", "good"), "rejected": conv("q", "a", "q2", "bad")},  # kept, multi-turn
        {"chosen": conv("q", "good", "q2"), "rejected": conv("q", "bad", "q2")},  # odd length
        {"chosen": [{"role": "system", "content": "s"}, *conv("q", "g")], "rejected": conv("q", "b")},  # system
        {"chosen": conv("q", "a", "q2", "good"), "rejected": conv("q", "b", "q2", "bad")},  # unequal context
        {"chosen": conv("q", "a", "q2", "good"), "rejected": conv("q", "bad")},  # unequal length
        {"chosen": conv("q", ""), "rejected": conv("q", "bad")},  # empty turn
        {"chosen": conv("", "good"), "rejected": conv("", "bad")},  # empty context turn
        {"chosen": conv("q", "same"), "rejected": conv("q", "same")},  # identical responses
        {"prompt": "p", "chosen": "good", "rejected": "bad"},  # kept, explicit prompt
        {"prompt": conv("q"), "chosen": conv("x", "good")[1:], "rejected": conv("x", "bad")[1:]},  # kept, TRL chat
        {"prompt": conv("q", "a"), "chosen": "good", "rejected": "bad"},  # prompt ends with the assistant
        {"prompt": "p", "chosen": "  ", "rejected": "bad"},  # blank response
        {"prompt": "p", "chosen": None, "rejected": "bad"},  # missing response: not text, not a bad conversation
        {"prompt": "p", "chosen": "good", "rejected": 3.5},  # a number
    ]
    pairs, stats = preference_pairs(rows)
    assert stats.rows == 15 and stats.pairs == 4
    assert dict(stats.dropped) == {
        "not_alternating": 3,
        "unequal_context": 2,
        "empty_turn": 3,
        "identical_responses": 1,
        "not_text": 2,
    }
    assert [p.prompt for p in pairs] == [conv("q"), conv("q", "a", "q2"), "p", conv("q")]
    assert all((p.chosen, p.rejected) == ("good", "bad") for p in pairs)
    assert "15 rows -> 4 pairs; dropped 11" in stats.summary()


def test_ultrafeedback_binarized_rows_are_preference_pairs(tokenizer):
    rows = [
        ultrafeedback_row("q", conv("q", "good"), conv("q", "bad")),  # kept: the prompt repeats the user turn
        ultrafeedback_row(" q\n", conv("q", "good"), conv("q", "bad")),  # kept: surrounding whitespace aside
        ultrafeedback_row("q", conv("q", "a", "q2", "good"), conv("q", "a", "q2", "bad")),  # kept: first user turn
        ultrafeedback_row(conv("q", "a", "q2"), conv("q", "a", "q2", "good"), conv("q", "a", "q2", "bad")),  # kept
        ultrafeedback_row("another question", conv("q", "good"), conv("q", "bad")),  # prompt of another pair
        ultrafeedback_row(conv("q"), conv("q", "a", "q2", "good"), conv("q", "a", "q2", "bad")),  # context differs
        ultrafeedback_row("q", conv("q", "a", "q2", "good"), conv("q", "b", "q2", "bad")),  # unequal context
        ultrafeedback_row("q", conv("q", "good", "q2"), conv("q", "bad", "q2")),  # ends with the user
        ultrafeedback_row("q", conv("q", "same"), conv("q", "same")),  # identical responses
    ]
    assert detect_schema(list(rows[0])) == "preference"  # `messages` beside chosen/rejected is not a comparison
    pairs, stats = preference_pairs(rows)
    assert (stats.rows, stats.pairs) == (9, 4)
    assert dict(stats.dropped) == {
        "prompt_mismatch": 2,
        "unequal_context": 1,
        "not_alternating": 1,
        "identical_responses": 1,
    }
    assert [p.prompt for p in pairs] == [conv("q"), conv("q"), conv("q", "a", "q2"), conv("q", "a", "q2")]
    assert all((p.chosen, p.rejected) == ("good", "bad") for p in pairs)
    # The context is the conversation before the last assistant turn: the same comparisons as the explicit form.
    formatter = RenderedContextFormatter(tokenizer)
    explicit, _ = preference_pairs([{"prompt": "q", "chosen": "good", "rejected": "bad"}])
    assert comparisons(pairs[:1], formatter) == comparisons(explicit, formatter)


def test_rlhflow_message_rows_are_parsed_and_bad_ones_counted():
    def row(content, label="A", roles=("user", "assistant")):
        return {"messages": [{"role": roles[0], "content": content}, {"role": roles[1], "content": label}]}

    good = TEMPLATE.format(context="\n\n\n<turn> user\n hi\n\n\n", response_A="x", response_B="y")
    rows = [
        row(good, "A"),
        row(good, "B\n"),
        row(good, "C"),
        row(good, "A", roles=("assistant", "user")),
        row(TEMPLATE.format(context="c", response_A="quote [RESPONSE B] x", response_B="y")),
        row(TEMPLATE.format(context="c", response_A=" ", response_B="y")),
        row("plain text, no template"),
    ]
    pairs, stats = preference_pairs(rows)
    assert [(p.chosen, p.rejected, p.context) for p in pairs] == [
        ("x", "y", "\n\n\n<turn> user\n hi\n\n\n"),
        ("y", "x", "\n\n\n<turn> user\n hi\n\n\n"),
    ]
    assert dict(stats.dropped) == {"not_a_comparison": 3, "ambiguous_template": 1, "empty_turn": 1}
    assert parse_comparison(row(good)["messages"]) == ("\n\n\n<turn> user\n hi\n\n\n", "x", "y", "A")


def test_comparison_rows_with_the_trailing_whitespace_stripped_are_parsed():
    def messages(content, label="A"):
        return [{"role": "user", "content": content}, {"role": "assistant", "content": label}]

    context = "\n\n\n<turn> user\n hi\n\n\n"
    good = TEMPLATE.format(context=context, response_A="x", response_B="multi\nline y")
    assert good.endswith(" \n") and parse_comparison(messages(good.rstrip())) == (context, "x", "multi\nline y", "A")
    # Only a full strip of the " \n" tail is tolerated; any other ending is not the template.
    for content in (good[:-1], good[:-2] + "\n", good + " ", good.rstrip() + "\t"):
        with pytest.raises(ValueError, match="not_a_comparison"):
            parse_comparison(messages(content))
    pairs, stats = preference_pairs([{"messages": messages(good.rstrip(), "B")}])
    assert [(p.chosen, p.rejected, p.context) for p in pairs] == [("multi\nline y", "x", context)]


def test_orders_both_random_and_split_by_pair(tokenizer):
    pairs, _ = preference_pairs(synthetic_pairs(50, seed=0))
    formatter = RenderedContextFormatter(tokenizer)
    both = comparisons(pairs, formatter, "both")
    assert len(both) == 100 and [c.label for c in both[:4]] == ["A", "B", "A", "B"]
    one = comparisons(pairs, formatter, "random", seed=7)
    assert len(one) == 50 and one == comparisons(pairs, formatter, "random", seed=7)
    assert 10 < sum(c.label == "A" for c in one) < 40  # both positions drawn
    assert one != comparisons(pairs, formatter, "random", seed=8)
    train, held = split_pairs(pairs, 0.2, seed=0)
    assert len(held) == 10 and len(train) == 40 and not set(map(id, train)) & set(map(id, held))
    assert split_pairs(pairs, 0.2, seed=0) == (train, held)
    with pytest.raises(ValueError, match="orders"):
        comparisons(pairs, formatter, "first")
    with pytest.raises(ValueError, match="nothing left"):
        split_pairs(pairs, 50, seed=0)
    with pytest.raises(ValueError, match="messages"):
        preference_pairs([{"prompt": "p", "completion": "c"}])


def test_as_is_trains_each_rlhflow_row_in_its_own_order(tokenizer):
    raw = synthetic_pairs(40, seed=2)
    rows = rlhflow_rows(tokenizer, raw, seed=5)
    pairs, _ = preference_pairs(rows)
    formatter = RenderedContextFormatter(tokenizer)
    as_is = comparisons(pairs, formatter, "as_is", seed=123)  # the seed plays no part
    # One comparison per row, in the row's order: the same (context, A, B, label) the row holds, row for row.
    assert [(c.context, c.response_a, c.response_b, c.label) for c in as_is] == [
        parse_comparison(row["messages"]) for row in rows
    ]
    assert as_is == comparisons(pairs, formatter, "as_is", seed=0)
    assert 10 < sum(c.label == "A" for c in as_is) < 30
    # `random` re-draws the order, so it does not keep the rows' labels.
    assert [c.label for c in comparisons(pairs, formatter, "random", seed=6)] != [c.label for c in as_is]
    # The training sequence is the row's own user turn, as the judge encodes it, + the row's label.
    for row, comp in zip(rows[:5], as_is):
        content, label = (m["content"] for m in row["messages"])
        example = tokenize_comparison(comp, formatter)
        assert example["input_ids"] == formatter.encoder.template(formatter.chat_text(content)) + [
            formatter.token_id_a if label == "A" else formatter.token_id_b
        ]
    preference, _ = preference_pairs(raw)
    with pytest.raises(ValueError, match="as_is.*no order"):
        comparisons(preference, formatter, "as_is")


def axolotl_llama3_sharegpt(tokenizer, messages: list[dict], sequence_len: int = 3072) -> tuple[list, list]:
    """RLHFlow's tokenization, transcribed: fastchat's `llama-3` conversation (axolotl's `get_turns` patch, no system
    message) and axolotl 55cc214's `ShareGPTPromptTokenizingStrategy.tokenize_prompt` / `_tokenize` with
    `train_on_inputs: false` (prompt_tokenizers.py), for `type: sharegpt.load_ultrachat` rows."""

    def _tokenize(prompt, add_eos_token=True, strip_bos_token=False):
        result = tokenizer(prompt, truncation=True, max_length=sequence_len, padding=False, return_tensors=None)
        if (
            result["input_ids"][-1] != tokenizer.eos_token_id
            and len(result["input_ids"]) < sequence_len
            and add_eos_token
        ):
            result["input_ids"].append(tokenizer.eos_token_id)
        if result["input_ids"][0] == tokenizer.bos_token_id and strip_bos_token:
            result["input_ids"] = result["input_ids"][1:]
        return result["input_ids"]

    input_ids, labels = [], []
    for message in messages:
        role = f"<|start_header_id|>{message['role']}<|end_header_id|>\n\n"
        turn = role + f"{message['content'].strip()}<|eot_id|>"
        if message["role"] == "user":
            ids = _tokenize(turn, add_eos_token=False, strip_bos_token=True)
            turn_labels = [-100] * len(ids)
        else:
            ids = _tokenize(turn, add_eos_token=True, strip_bos_token=True)
            role_ids = _tokenize(role.rstrip(), add_eos_token=False, strip_bos_token=True)
            turn_labels = list(ids)
            turn_labels[: len(role_ids)] = [-100] * min(len(role_ids), len(turn_labels))
        input_ids += ids
        labels += turn_labels
    return input_ids, labels


@pytest.mark.parametrize("eos", ["<|eot_id|>", "<|end_of_text|>"])
def test_rlhflow_label_format_is_axolotls_tokenization(tiny_pair_lm_path, eos):
    """RLHFlow's training tokens and loss mask, token for token, for both EOS settings Meta-Llama-3-8B-Instruct's
    tokenizer had (an EOS other than <|eot_id|> is appended after it, as axolotl appends EOS)."""
    from tokenizers import processors

    tok = AutoTokenizer.from_pretrained(tiny_pair_lm_path)
    # Like Llama-3's own tokenizer, prepend BOS when called (axolotl strips it from every turn; the judge has none).
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.bos_token_id)]
    )
    tok.eos_token = eos
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    formatter = RenderedContextFormatter(tok)
    target = rlhflow_label_tokens(formatter)
    raw = synthetic_pairs(4, seed=3) + [{"prompt": MULTI_TURN, "chosen": " Seine flows\n", "rejected": "No."}]
    rows = rlhflow_rows(tok, raw, seed=1)
    pairs, _ = preference_pairs(rows)
    for row, comp in zip(rows, comparisons(pairs, formatter, "as_is")):
        example = tokenize_comparison(comp, formatter, target)
        input_ids, labels = axolotl_llama3_sharegpt(tok, row["messages"])
        assert (example["input_ids"], example["labels"]) == (input_ids, labels)
        # The user turn is the judge's input for the pair, unchanged; the loss is on "\n\n", the label, the end.
        inference = judge.formatter.encode(raw[comp.pair_index]["prompt"], comp.response_a, comp.response_b)
        assert input_ids[: len(inference)] == inference and tok.bos_token_id not in input_ids
        trained = tok.convert_ids_to_tokens([i for i, lab in zip(input_ids, labels) if lab != -100])
        assert trained == ["Ċ", "Ċ", comp.label, "<|eot_id|>"] + ([eos] if eos != "<|eot_id|>" else [])
    assert target.max_length == len(target.ids["A"]) == 8 + (eos != "<|eot_id|>")
    with pytest.raises(ValueError, match="loss_on_eot"):
        PairPMConfig(label_format="rlhflow", loss_on_eot=True)


def test_overlong_comparisons_are_truncated_or_dropped_and_counted(tokenizer):
    formatter = RenderedContextFormatter(tokenizer, max_length=100)  # synthetic comparisons: 58-76 tokens
    pairs, _ = preference_pairs(
        synthetic_pairs(6, seed=0) + [{"prompt": "long " * 80, "chosen": "a !", "rejected": "b #"}] * 2
    )
    built = tokenized_dataset(comparisons(pairs, formatter), formatter)
    assert sum(built["truncated"]) == 4  # both orders of the two long pairs
    truncated, count = apply_overlong(built, "truncate")
    assert count == 4 and len(truncated) == 16 and truncated.column_names == ["input_ids", "labels"]
    assert max(map(len, truncated["input_ids"])) <= 101  # within the judge's budget + the label
    dropped, count = apply_overlong(built, "drop")
    assert count == 4 and len(dropped) == 12 and dropped.to_list() == truncated.to_list()[:12]
    with pytest.raises(ValueError, match="overlong"):
        PairPMConfig(overlong="cut")


def test_tokenized_comparisons_are_cached_by_their_inputs(tiny_pair_lm_path, tmp_path):
    """What lets the other processes of a launch load the main process's tokenization (`main_process_first`)."""
    formatter = RenderedContextFormatter(AutoTokenizer.from_pretrained(tiny_pair_lm_path), max_length=100)
    pairs, _ = preference_pairs(synthetic_pairs(5, seed=0) + [{"prompt": "long " * 40, "chosen": "a", "rejected": "b"}])
    comps = comparisons(pairs, formatter)
    built = tokenized_dataset(comps, formatter, cache_dir=tmp_path)
    assert formatter.num_truncated == 2 and sum(built["truncated"]) == 2
    assert [Path(f["filename"]).parent for f in built.cache_files] == [tmp_path]

    # Another process: its own tokenizer and formatter, same inputs -> the same file, read rather than recomputed.
    other = RenderedContextFormatter(AutoTokenizer.from_pretrained(tiny_pair_lm_path), max_length=100)
    loaded = tokenized_dataset(comparisons(pairs, other), other, cache_dir=tmp_path)
    assert loaded.cache_files == built.cache_files and other.num_truncated == 0
    assert loaded.to_list() == built.to_list() == tokenized_dataset(comps, formatter).to_list()  # == in memory

    # Any input that changes the ids gets its own file.
    eot = formatter.tokenizer.convert_tokens_to_ids("<|eot_id|>")
    for variant in (
        tokenized_dataset(comps, formatter, LabelTokens.judge(formatter, eot), cache_dir=tmp_path),
        tokenized_dataset(comps, formatter, rlhflow_label_tokens(formatter), cache_dir=tmp_path),
        tokenized_dataset(comps, RenderedContextFormatter(formatter.tokenizer, max_length=None), cache_dir=tmp_path),
        tokenized_dataset(comps[:-1], formatter, cache_dir=tmp_path),
    ):
        assert variant.cache_files != built.cache_files and variant.to_list() != built.to_list()
    assert len(list(tmp_path.glob("comparisons-*.arrow"))) == 5


# ------------------------------------------------------------------------------------------------------------------
# Pad token
# ------------------------------------------------------------------------------------------------------------------


def test_pad_token_is_never_eos_or_a_label_and_padding_keeps_the_labels(tiny_pair_lm_path, tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path)
    tok = AutoTokenizer.from_pretrained(tiny_pair_lm_path)
    tok.pad_token = tok.eos_token  # RLHFlow's prepare_model.py: pad = eos (= <|eot_id|>, the token the judge reads)
    pad = ensure_pad_token(tok, model)
    formatter = RenderedContextFormatter(tok)
    assert pad == "<|pad|>" and tok.pad_token_id not in {tok.eos_token_id, formatter.token_id_a, formatter.token_id_b}
    assert model.config.pad_token_id == tok.pad_token_id
    assert model.get_input_embeddings().weight.shape[0] == len(tok) == len(tokenizer) + 1
    # An existing reserved token is reused rather than growing the vocabulary.
    tok2 = AutoTokenizer.from_pretrained(tiny_pair_lm_path)
    tok2.add_special_tokens({"additional_special_tokens": ["<|finetune_right_pad_id|>"]})
    assert ensure_pad_token(tok2) == "<|finetune_right_pad_id|>"

    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    target = LabelTokens.judge(formatter, eot)
    short = tokenize_comparison(Comparison("c", "a", "b", "A", 0), formatter, target)
    long = tokenize_comparison(Comparison("c", "a much longer answer", "b", "B", 1), formatter, target)
    batch = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id)([short, long])
    n = len(short["input_ids"])
    assert batch["labels"][0, n - 2 : n].tolist() == [formatter.token_id_a, eot]  # the eot label survives padding
    assert (batch["labels"][0, n:] == -100).all() and (batch["input_ids"][0, n:] == tok.pad_token_id).all()
    assert batch["labels"][1, -2:].tolist() == [formatter.token_id_b, eot]
    assert int((batch["input_ids"] != tok.pad_token_id).sum()) == n + len(long["input_ids"])  # no real token masked


# ------------------------------------------------------------------------------------------------------------------
# Packing
# ------------------------------------------------------------------------------------------------------------------


def losses_by_comparison(model, examples: list[dict], padding_free: bool) -> dict[tuple, float]:
    """{a comparison's input ids: the summed cross-entropy of its labelled tokens}, for ``examples`` (packed rows
    with ``seq_lengths``, or single comparisons) collated by TRL's collator as the trainer collates them."""
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=padding_free)(examples)
    labels = batch.pop("labels")
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    token_losses = torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="none"
    ).view(labels.shape[0], -1)
    token_losses = torch.nn.functional.pad(token_losses, (1, 0))  # the loss of predicting token t, at t
    out = {}
    for row in range(labels.shape[0]):
        if padding_free:  # one flattened row; a comparison starts where its position ids restart
            starts = (batch["position_ids"][row] == 0).nonzero().flatten().tolist() + [labels.shape[1]]
            spans = list(zip(starts[:-1], starts[1:]))
        else:
            spans = [(0, int(batch["attention_mask"][row].sum()))]
        for start, end in spans:
            ids = tuple(batch["input_ids"][row, start:end].tolist())
            out[ids] = float(token_losses[row, start:end][labels[row, start:end] != -100].sum())
    return out


def test_packed_comparisons_keep_the_loss_they_have_alone(tiny_pair_lm_path, tokenizer):
    """TRL's packing (best-fit decreasing, padding-free rows, position ids restarting per comparison) on sdpa: every
    comparison's loss equals its loss in an ordinary padded batch."""
    from transformers import AutoModelForCausalLM
    from trl import pack_dataset

    model = AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path, attn_implementation="sdpa").eval()
    formatter = RenderedContextFormatter(tokenizer)
    pairs, _ = preference_pairs(synthetic_pairs(8, seed=4))
    target = rlhflow_label_tokens(formatter)  # four trained tokens per comparison
    examples = tokenized_dataset(comparisons(pairs, formatter), formatter, target).remove_columns("truncated")
    packed = pack_dataset(examples, 512, "bfd")
    assert len(packed) <= 3 and max(map(len, packed["seq_lengths"])) >= 6
    alone = losses_by_comparison(model, examples.to_list(), padding_free=False)
    together = losses_by_comparison(model, packed.to_list(), padding_free=True)
    assert together.keys() == alone.keys() and len(alone) == 16
    for ids, loss in alone.items():
        assert together[ids] == pytest.approx(loss, rel=1e-5, abs=1e-5)


@pytest.fixture(scope="module")
def padded_lm(small_init_lm, tmp_path_factory):
    """The trainable tiny LM saved with its pad token already added, so that every run starts from equal weights
    (adding the token draws a new embedding row)."""
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("models") / "tiny-lm-padded"
    model, tok = AutoModelForCausalLM.from_pretrained(small_init_lm), AutoTokenizer.from_pretrained(small_init_lm)
    ensure_pad_token(tok, model)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_packed_training_takes_the_same_step_as_unpacked(padded_lm, tmp_path):
    data = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(synthetic_pairs(8, seed=0)).to_json(str(data))
    # One SGD step over all 16 comparisons either way: 16 padded comparisons, or the few packed rows holding them.
    common = ["--config", str(ROOT / "recipes/pair_pm/tiny-cpu.yaml"), "--model_name_or_path", str(padded_lm),
              "--dataset_name", str(data), "--eval_size", "0", "--max_steps", "1", "--optim", "sgd",
              "--learning_rate", "1.0", "--per_device_train_batch_size", "16", "--max_length", "256",
              "--disable_tqdm", "true"]  # fmt: skip
    unpacked = load_script("train_pair_pm").main([*common, "--output_dir", str(tmp_path / "unpacked")])
    packed = load_script("train_pair_pm").main([*common, "--output_dir", str(tmp_path / "packed"), "--packing", "true"])
    assert unpacked["train_comparisons"] == packed["train_comparisons"] == unpacked["train_sequences"] == 16
    assert packed["train_sequences"] <= 5
    assert packed["train_loss"] == pytest.approx(unpacked["train_loss"], rel=1e-5)
    start = load_file(padded_lm / "model.safetensors")
    after = {name: load_file(tmp_path / name / "model.safetensors") for name in ("unpacked", "packed")}
    assert sum(not torch.equal(start[k], after["packed"][k]) for k in start) > len(start) // 2
    for key in start:
        torch.testing.assert_close(after["packed"][key], after["unpacked"][key], rtol=1e-5, atol=1e-6)


def test_packing_refuses_attention_that_lets_comparisons_see_each_other(tiny_pair_lm_path, tmp_path):
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    def whole_row_causal(module, query, key, value, attention_mask, **kwargs):
        return sdpa_attention_forward(module, query, key, value, None, **kwargs)  # ignores the packed mask

    model = AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path, attn_implementation="sdpa")
    args = SFTConfig(str(tmp_path), packing=True, use_cpu=True, report_to="none")
    assert check_packing(model, args) is True
    model.set_attn_implementation("eager")  # transformers 5 builds the eager mask from the position ids too
    assert check_packing(model, args) is True
    assert check_packing(model, SFTConfig(str(tmp_path), use_cpu=True, report_to="none")) is False  # no packing
    with pytest.raises(ValueError, match="wrapped"):
        check_packing(model, SFTConfig(str(tmp_path), packing=True, packing_strategy="wrapped", use_cpu=True))
    AttentionInterface.register("whole_row_causal", whole_row_causal)
    AttentionMaskInterface.register("whole_row_causal", sdpa_mask)
    try:
        model.set_attn_implementation("whole_row_causal")
        assert packed_attention_leak(model) > 0.01
        with pytest.raises(ValueError, match="'whole_row_causal'.*attend to each other"):
            check_packing(model, args)
    finally:
        AttentionInterface._global_mapping.pop("whole_row_causal")
        AttentionMaskInterface._global_mapping.pop("whole_row_causal")


# ------------------------------------------------------------------------------------------------------------------
# Recipes
# ------------------------------------------------------------------------------------------------------------------


def test_every_recipe_key_is_a_field_of_the_parsed_dataclasses():
    from dataclasses import fields

    known = {f.name for cls in (PairPMConfig, SFTConfig, ModelConfig) for f in fields(cls)}
    for path in sorted((ROOT / "recipes" / "pair_pm").glob("*.yaml")):
        keys = set(yaml.safe_load(path.read_text()))
        assert keys <= known, f"{path.name}: unknown keys {keys - known}"
    from rlhf_pairs.scripts.train_pair_pm import make_parser

    # GPU recipes parse on this CPU machine once the GPU-only switches are turned off.
    for name in ("llama3-8b-it", "llama3-8b-it-lora"):
        script, training, model = make_parser().parse_args_and_config(
            args=[
                "--config",
                str(ROOT / "recipes/pair_pm" / f"{name}.yaml"),
                "--bf16",
                "false",
                "--tf32",
                "false",
                "--use_cpu",
                "true",
            ]
        )
        assert training.learning_rate == (5e-6 if name == "llama3-8b-it" else 1e-4)
        assert training.max_length == 3072 and training.warmup_steps == 40 and training.lr_scheduler_type == "cosine"
        # RLHFlow's sample packing: 128 packed 3072-token sequences per step on 8 GPUs, each row as the data hold it
        assert training.packing and training.packing_strategy == "bfd"
        assert training.per_device_train_batch_size * training.gradient_accumulation_steps * 8 == 128
        assert script.orders == "as_is" and script.label_format == "judge" and script.overlong == "truncate"
        assert script.dataset_name == "RLHFlow/pair_preference_model_dataset"
        assert model.model_name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct" and model.use_peft == ("lora" in name)


# ------------------------------------------------------------------------------------------------------------------
# Training through the real script
# ------------------------------------------------------------------------------------------------------------------


def test_recipe_learns_a_synthetic_preference_and_round_trips_as_a_judge(small_init_lm, tokenizer, tmp_path):
    train, test = synthetic_pairs(320, seed=0), synthetic_pairs(40, seed=1)
    data = tmp_path / "rlhflow"
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rlhflow_rows(tokenizer, train, seed=0)),
            "test": datasets.Dataset.from_list(rlhflow_rows(tokenizer, test, seed=1)),
        }
    ).save_to_disk(str(data))
    prompts, chosen, rejected = ([p[k] for p in test] for k in ("prompt", "chosen", "rejected"))
    before = PairPreferenceJudge.from_pretrained(str(small_init_lm), device="cpu")
    accuracy_before = accuracy(before.compare(prompts, chosen, rejected))

    out = tmp_path / "out"
    summary = load_script("train_pair_pm").main(
        [
            "--config",
            str(ROOT / "recipes/pair_pm/tiny-cpu.yaml"),
            "--model_name_or_path",
            str(small_init_lm),
            "--dataset_name",
            str(data),
            "--dataset_test_split",
            "test",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "true",
        ]
    )
    assert summary["train_comparisons"] == 640 and summary["eval_pairs"] == 40  # both orders of every pair
    assert math.isfinite(summary["train_loss"])

    # Round trip: the saved directory is a judge.
    judge = PairPreferenceJudge.from_pretrained(str(out), device="cpu")
    assert judge.tokenizer.pad_token == "<|pad|>"
    probs = judge.compare(prompts, chosen, rejected)
    assert accuracy(probs) > 0.75 and accuracy(probs) > accuracy_before + 0.2, (accuracy_before, accuracy(probs))
    assert judge.judge(prompts[:4], [[r, c] for c, r in zip(chosen[:4], rejected[:4])], shuffle_order=False) == [1] * 4
    # The logged held-out metric is the number a user gets from compare (same code path, both orders).
    assert summary["eval"]["eval_pairwise_accuracy"] == pytest.approx(accuracy(probs))
    assert summary["eval"]["eval_pairwise_prob_chosen"] == pytest.approx(sum(probs) / len(probs), abs=1e-5)
    # Parameters changed (beyond the added pad row).
    start, end = load_file(small_init_lm / "model.safetensors"), load_file(out / "model.safetensors")
    changed = [k for k in start if start[k].shape == end[k].shape and not torch.equal(start[k], end[k])]
    assert len(changed) > len(start) // 2


def test_lora_variant_saves_a_merged_model_that_loads_as_a_judge(small_init_lm, tokenizer, tmp_path):
    data = tmp_path / "pairs.jsonl"
    datasets.Dataset.from_list(synthetic_pairs(40, seed=0)).to_json(str(data))
    out = tmp_path / "lora"
    summary = load_script("train_pair_pm").main(
        [
            "--config",
            str(ROOT / "recipes/pair_pm/tiny-cpu.yaml"),
            "--model_name_or_path",
            str(small_init_lm),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(out),
            "--max_steps",
            "3",
            "--use_peft",
            "true",
            "--lora_target_modules",
            "q_proj",
            "v_proj",
            "--lora_r",
            "4",
            "--disable_tqdm",
            "true",
        ]
    )
    assert math.isfinite(summary["train_loss"]) and summary["eval_pairs"] == 8  # eval_size 0.2 of 40 pairs
    assert (out / "adapter" / "adapter_config.json").exists() and not (out / "adapter_config.json").exists()
    judge = PairPreferenceJudge.from_pretrained(str(out), device="cpu")
    assert len(judge.compare(["hi."], ["a !"], ["b #"])) == 1
    start, merged = load_file(small_init_lm / "model.safetensors"), load_file(out / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(start[key], merged[key])  # the adapter was merged in


def test_ultrafeedback_binarized_format_trains(small_init_lm, tmp_path, monkeypatch):
    """The job reads HuggingFaceH4/ultrafeedback_binarized's columns (before: every row dropped as not_a_comparison)
    and caches its tokenized comparisons in the datasets cache."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    rows = [
        ultrafeedback_row(p["prompt"], conv(p["prompt"], p["chosen"]), conv(p["prompt"], p["rejected"]))
        for p in synthetic_pairs(20, seed=0)
    ]
    data = tmp_path / "ultrafeedback.jsonl"
    datasets.Dataset.from_list(rows).to_json(str(data))
    summary = load_script("train_pair_pm").main(
        [
            "--config",
            str(ROOT / "recipes/pair_pm/tiny-cpu.yaml"),
            "--model_name_or_path",
            str(small_init_lm),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(tmp_path / "out"),
            "--max_steps",
            "2",
            "--disable_tqdm",
            "true",
        ]
    )
    assert summary["conversion"] == "20 rows -> 20 pairs; dropped 0 (none)"
    assert summary["train_comparisons"] == 32 and summary["eval_pairs"] == 4 and math.isfinite(summary["train_loss"])
    assert len(list((tmp_path / "hf_cache" / "rlhf_pairs").glob("comparisons-*.arrow"))) == 2  # train and eval


def test_rlhflow_letter_run_as_is_labels_dropped_overlong_packed(padded_lm, tokenizer, tmp_path):
    """RLHFlow's run to the letter: each row in its own order, RLHFlow's sequences, over-long rows dropped (and
    counted), packed rows."""
    raw = synthetic_pairs(30, seed=0)
    for i in (3, 7):
        raw[i]["prompt"] = "long " * 80  # ~290 tokens: over max_length
    data = tmp_path / "rlhflow.jsonl"
    datasets.Dataset.from_list(rlhflow_rows(tokenizer, raw, seed=0)).to_json(str(data))
    summary = load_script("train_pair_pm").main(
        [
            "--config",
            str(ROOT / "recipes/pair_pm/tiny-cpu.yaml"),
            "--model_name_or_path",
            str(padded_lm),
            "--dataset_name",
            str(data),
            "--output_dir",
            str(tmp_path / "out"),
            "--orders",
            "as_is",
            "--label_format",
            "rlhflow",
            "--overlong",
            "drop",
            "--packing",
            "true",
            "--max_length",
            "200",
            "--eval_size",
            "0",
            "--max_steps",
            "2",
            "--disable_tqdm",
            "true",
        ]
    )
    assert summary["conversion"] == "30 rows -> 30 pairs; dropped 0 (none)"
    assert (summary["overlong_dropped"], summary["overlong_truncated"]) == (2, 0)
    assert summary["train_comparisons"] == 28  # one per row, as the row holds it; the two long rows dropped
    assert summary["train_sequences"] <= 28 // 2 and math.isfinite(summary["train_loss"])
    start, end = load_file(padded_lm / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert sum(not torch.equal(start[k], end[k]) for k in start) > len(start) // 2
