"""Code written for TRL's former judges (``trl/trainer/judges.py``, removed in TRL 1.x; checked against TRL 0.19.0)
runs unchanged: ``PairRMJudge.judge(..., temperature=...)``, ``PairRMJudge()`` with no arguments, llm-blender's
original ``llm-blender/PairRM`` checkpoint layout, and ``BasePairwiseJudge``-style judges through
``TRLJudgeAdapter``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_pairrm import CANDS_A, CANDS_B, INPUTS, CardDebertaV2PairRM, card_tokenize_pair
from torch import nn
from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

from rlhf_pairs import PairRMJudge, PairwiseJudge, PairwiseRewardFunction, TRLJudgeAdapter, as_judge, rank_candidates
from rlhf_pairs.judges.loading import load_judge
from rlhf_pairs.testing_utils import train_tiny_unigram_tokenizer

ROOT = Path(__file__).resolve().parents[1]


# --- TRL 0.19.0's PairRMJudge.judge over llm-blender's Blender.rank, transcribed -----------------------------------


def get_scores_from_cmps(cmp_results):
    """llm-blender (llm_blender/gpt_eval/utils.py), policy "max_logits"."""
    bz, c, _ = cmp_results.shape
    scores = np.zeros((bz, c), dtype=np.float32)
    for i in range(bz):
        scores[i] = (cmp_results[i] - cmp_results[i].T).mean(axis=-1)
    return scores


def get_ranks_from_scores(scores):
    """llm-blender (llm_blender/gpt_eval/utils.py)."""
    bz, c = scores.shape
    ranks = np.zeros((bz, c), dtype=np.int32)
    for i in range(bz):
        sorted_scores_i = list(sorted(list(scores[i]), reverse=True))
        for j in range(c):
            ranks[i, j] = sorted_scores_i.index(scores[i, j]) + 1
    return ranks


class ReferenceBlender:
    """Blender.rank for a pairranker: the full comparison matrix of each prompt's candidates (diagonal 0), the
    comparisons computed with the PairRM-hf card's model and tokenize_pair (equal to llm-blender's, per the card)."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer
        self.logits: dict[tuple, float] = {}  # (source, first, second) -> the model's logit, each computed once

    def logit(self, source, first, second):
        if (source, first, second) not in self.logits:
            enc = card_tokenize_pair(self.tokenizer, [source], [first], [second])
            with torch.no_grad():
                self.logits[(source, first, second)] = self.model(**enc).item()
        return self.logits[(source, first, second)]

    def rank(self, inputs, candidates, return_scores=False, disable_tqdm=False):
        cmps = np.zeros((len(inputs), len(candidates[0]), len(candidates[0])), dtype=np.float32)
        for n, (source, cands) in enumerate(zip(inputs, candidates)):
            for i in range(len(cands)):
                for j in range(len(cands)):
                    if i != j:
                        cmps[n, i, j] = self.logit(source, cands[i], cands[j])
        scores = get_scores_from_cmps(cmps)
        return scores if return_scores else get_ranks_from_scores(scores)


def trl_pairrm_judge(blender, prompts, completions, shuffle_order=True, return_scores=False, temperature=1.0):
    """TRL 0.19.0 trl/trainer/judges.py PairRMJudge.judge, transcribed."""
    if len(completions[0]) != 2:
        raise ValueError("PairRM judge requires exactly 2 completions per prompt.")
    if shuffle_order:
        flip_mask = np.random.choice([True, False], size=len(prompts))
        completions = [pair[::-1] if flip else pair for flip, pair in zip(flip_mask, completions)]
    ranks = blender.rank(prompts, completions, return_scores=return_scores, disable_tqdm=True)
    if not return_scores:
        ranks -= 1
    else:
        ranks /= temperature
    if shuffle_order:
        ranks[flip_mask] = ranks[flip_mask][:, ::-1]
    if return_scores:
        logit_max = np.amax(ranks, axis=-1, keepdims=True)
        exp_logit_shifted = np.exp(ranks - logit_max)
        probs = exp_logit_shifted / np.sum(exp_logit_shifted, axis=-1, keepdims=True)
        return probs[:, 0].tolist()
    return ranks[:, 0].tolist()


@pytest.fixture(scope="module")
def blender(tiny_pairrm_path):
    model = CardDebertaV2PairRM.from_pretrained(str(tiny_pairrm_path)).eval()
    return ReferenceBlender(model, AutoTokenizer.from_pretrained(str(tiny_pairrm_path)))


@pytest.mark.parametrize("shuffle_order", [False, True])
def test_pairrm_judge_is_trls_pairrm_judge_with_temperature(tiny_pairrm_path, blender, shuffle_order):
    judge = PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu")
    completions = [[a, b] for a, b in zip(CANDS_A, CANDS_B)]
    for temperature in (1.0, 0.5, 3.0):
        want = trl_pairrm_judge(blender, INPUTS, completions, False, return_scores=True, temperature=temperature)
        got = judge.judge(INPUTS, completions, shuffle_order=shuffle_order, return_scores=True, temperature=temperature)
        assert got == pytest.approx(want, abs=1e-5)
    assert judge.judge(INPUTS, completions, shuffle_order=shuffle_order) == trl_pairrm_judge(
        blender, INPUTS, completions, shuffle_order
    )
    # The temperature has teeth, and a call's temperature leaves the judge's own (and its cache) alone.
    sharp = judge.judge(INPUTS, completions, shuffle_order=False, return_scores=True, temperature=0.5)
    assert max(abs(p - q) for p, q in zip(sharp, judge.compare(INPUTS, CANDS_A, CANDS_B))) > 1e-3
    assert judge.temperature == 1.0
    fresh = PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu")
    assert judge.compare(INPUTS, CANDS_A, CANDS_B) == pytest.approx(fresh.compare(INPUTS, CANDS_A, CANDS_B), abs=1e-7)


def test_judge_temperature_on_the_pair_lm_rescores_without_touching_the_cache(tiny_pair_lm_path):
    judge = load_judge("pair_lm", str(tiny_pair_lm_path))
    hot = load_judge("pair_lm", str(tiny_pair_lm_path), temperature=2.0)
    prompts, a, b = ["hello!", "What is 2 + 2?"], ["hi!", "4"], ["go away", "The answer is 4."]
    before = judge.compare(prompts, a, b)
    at_two = judge.judge(
        prompts, [[x, y] for x, y in zip(a, b)], shuffle_order=False, return_scores=True, temperature=2
    )
    assert at_two == pytest.approx(hot.compare(prompts, a, b), abs=1e-6)
    assert max(abs(p - q) for p, q in zip(at_two, before)) > 1e-4
    assert judge.temperature == 1.0 and judge.compare(prompts, a, b) == before
    with pytest.raises(ValueError, match="temperature"):
        judge.judge(prompts, [[x, y] for x, y in zip(a, b)], temperature=0)


class LengthJudge(PairwiseJudge):
    def score_ordered_pairs(self, prompts, first, second):
        return torch.tensor([float(len(x) > len(y)) for x, y in zip(first, second)], dtype=torch.float64)


def test_judge_temperature_needs_a_judge_with_one():
    with pytest.raises(ValueError, match="LengthJudge has no `temperature`"):
        LengthJudge().judge(["p"], [["aa", "b"]], temperature=2.0)
    assert LengthJudge().judge(["p"], [["aa", "b"]]) == [0]


# --- PairRMJudge() with no arguments: llm-blender/PairRM-hf --------------------------------------------------------


def test_pairrm_judge_without_arguments_loads_pairrm_hf(tiny_pairrm_path, tmp_path):
    """``PairRMJudge()`` resolves ``llm-blender/PairRM-hf`` through the Hub cache (offline: a cache holding the tiny
    model under that name), as TRL's ``PairRMJudge()`` loaded llm-blender's PairRM."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--llm-blender--PairRM-hf"
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in tiny_pairrm_path.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    code = (
        "import json; from rlhf_pairs import PairRMJudge; judge = PairRMJudge(); "
        "print(json.dumps([str(judge.device), judge.compare(['hello!', 'hi'], ['hi!', 'a'], ['go away', 'bb'])]))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    device, probs = json.loads(out.stdout.strip().splitlines()[-1])
    local = PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu")
    assert device == "cpu"
    assert probs == pytest.approx(local.compare(["hello!", "hi"], ["hi!", "a"], ["go away", "bb"]), abs=1e-6)


def test_pairrm_judge_needs_model_and_tokenizer_together(tiny_pairrm_path):
    from rlhf_pairs import DebertaV2PairRM

    model = DebertaV2PairRM.from_pretrained(str(tiny_pairrm_path))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_pairrm_path))
    with pytest.raises(ValueError, match="no tokenizer"):
        PairRMJudge(model)
    with pytest.raises(ValueError, match="no model"):
        PairRMJudge(tokenizer=tokenizer)
    assert PairRMJudge(model, tokenizer).compare(["hi"], ["a"], ["b"])[0] == pytest.approx(
        PairRMJudge.from_pretrained(str(tiny_pairrm_path), device="cpu").compare(["hi"], ["a"], ["b"])[0], abs=1e-6
    )


# --- llm-blender's original PairRM layout ---------------------------------------------------------------------------

BLENDER_PREFIXES = ["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"]


class BlenderCrossCompareReranker(nn.Module):
    """llm-blender's CrossCompareReranker (llm_blender/pair_ranker/ranker.py, commit 2a67366), transcribed: its
    parameters and ``_forward`` / ``cat_ids`` for an encoder-only backbone."""

    def __init__(self, pretrained_model, n_tasks, drop_out, tokenizer):
        super().__init__()
        self.pretrained_model = pretrained_model
        self.hidden_size = pretrained_model.config.hidden_size
        self.sep_token_id = tokenizer.sep_token_id
        self.tokenizer = tokenizer
        self.head_layer = nn.Sequential(
            nn.Dropout(drop_out),
            nn.Linear(2 * self.hidden_size, 1 * self.hidden_size),
            nn.Tanh(),
            nn.Dropout(drop_out),
            nn.Linear(1 * self.hidden_size, n_tasks),
        )
        self.sigmoid = nn.Sigmoid()

    def _forward(self, source_ids, source_attention_mask, cand1_ids, cand1_attention_mask, cand2_ids, cand2_mask):
        cand1_ids = cand1_ids.clone()
        cand2_ids = cand2_ids.clone()
        cand_prefix_id, cand1_prefix_id, cand2_prefix_id, source_prefix_id = (
            self.tokenizer.convert_tokens_to_ids(t)
            for t in ("<|candidate|>", "<|candidate1|>", "<|candidate2|>", "<|source|>")
        )
        cand1_ids[torch.where(cand1_ids == cand_prefix_id)] = cand1_prefix_id
        cand2_ids[torch.where(cand2_ids == cand_prefix_id)] = cand2_prefix_id
        input_ids, attention_mask = self.cat_ids(
            source_ids, source_attention_mask, cand1_ids, cand1_attention_mask, cand2_ids, cand2_mask
        )
        keep_column_mask = attention_mask.ne(0).any(dim=0)
        input_ids = input_ids[:, keep_column_mask]
        attention_mask = attention_mask[:, keep_column_mask]
        outputs = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        encs = outputs.hidden_states[-1]
        source_idxs = torch.where(input_ids == source_prefix_id)
        source_encs = encs[source_idxs[0], source_idxs[1], :]
        cand1_idxs = torch.where(input_ids == cand1_prefix_id)
        cand1_encs = encs[cand1_idxs[0], cand1_idxs[1], :]
        cand2_idxs = torch.where(input_ids == cand2_prefix_id)
        cand2_encs = encs[cand2_idxs[0], cand2_idxs[1], :]
        left_pred_scores = self.head_layer(torch.cat([source_encs, cand1_encs], dim=-1))
        right_pred_scores = self.head_layer(torch.cat([source_encs, cand2_encs], dim=-1))
        return (left_pred_scores - right_pred_scores).mean(dim=-1)

    def cat_ids(self, ids1, masks1, ids2, masks2, ids3, masks3):
        bz = ids1.shape[0]
        last_sep = [ids.eq(self.sep_token_id).nonzero()[:, 1].reshape(bz, -1)[:, -1] for ids in (ids1, ids2, ids3)]
        cat_ids, cat_masks = [], []
        for i in range(bz):
            s1, s2, s3 = (int(s[i]) for s in last_sep)
            cat_ids.append(
                torch.cat(
                    [
                        ids1[i, : s1 + 1],
                        ids2[i, : s2 + 1],
                        ids3[i, : s3 + 1],
                        ids1[i, s1 + 1 :],
                        ids2[i, s2 + 1 :],
                        ids3[i, s3 + 1 :],
                    ]
                )
            )
            cat_masks.append(
                torch.cat(
                    [
                        masks1[i, : s1 + 1],
                        masks2[i, : s2 + 1],
                        masks3[i, : s3 + 1],
                        masks1[i, s1 + 1 :],
                        masks2[i, s2 + 1 :],
                        masks3[i, s3 + 1 :],
                    ]
                )
            )
        return torch.stack(cat_ids), torch.stack(cat_masks)


def blender_collate(tokenizer, sources, candidates, source_maxlength, candidate_maxlength):
    """llm-blender's CrossCompareCollator.__call__ (llm_blender/pair_ranker/collator.py), its branch for tokenizers
    whose ``encode(sep_token)`` is not one token (DeBERTa's: [CLS] [SEP] [SEP]), transcribed."""

    def encode_texts(texts, max_length):
        # batch_encode_plus in llm-blender; transformers 5 keeps only its __call__ equivalent.
        p = tokenizer(texts, max_length=max_length, padding="max_length", return_tensors="pt", truncation=True)
        return p["input_ids"], p["attention_mask"]

    assert len(tokenizer.encode(tokenizer.sep_token)) != 1
    batch_source = [("<|source|>" + s).replace(tokenizer.sep_token, " ") for s in sources]
    batch_candidates = [[("<|candidate|>" + c).replace(tokenizer.sep_token, " ") for c in cs] for cs in candidates]
    source_ids, source_masks = encode_texts(batch_source, source_maxlength)
    valid_positions = source_masks.any(dim=0)
    source_ids, source_masks = source_ids[:, valid_positions], source_masks[:, valid_positions]
    remaining_length = source_maxlength - valid_positions.sum().item()
    encoded = [encode_texts(cs, candidate_maxlength + remaining_length // 2) for cs in batch_candidates]
    candidate_ids = torch.stack([ids for ids, _ in encoded])
    candidate_masks = torch.stack([mask for _, mask in encoded])
    cand_valid_positions = candidate_masks.reshape(-1, candidate_masks.shape[-1]).any(dim=0)
    return (
        source_ids,
        source_masks,
        candidate_ids[:, :, cand_valid_positions],
        candidate_masks[:, :, cand_valid_positions],
    )


def write_llm_blender_checkpoint(root: Path, source_maxlength=48, candidate_maxlength=24, **ranker_overrides):
    """A tiny checkpoint in llm-blender/PairRM's layout: ``config.json`` = llm-blender's RankerConfig naming a backbone
    (a local stand-in for microsoft/deberta-v3-large: its transformers config and tokenizer), and
    ``pytorch_model.bin`` = CrossCompareReranker's state dict (with the ``position_ids`` buffer older transformers
    saved). Returns (checkpoint dir, reference ranker, its tokenizer)."""
    backbone = root / "deberta-v3-tiny"
    tokenizer = train_tiny_unigram_tokenizer(prefix_tokens=False)
    config = DebertaV2Config(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=256,
        norm_rel_ebd="layer_norm",
        share_att_key=True,
        pos_att_type="p2c|c2p",
        position_biased_input=False,
        max_relative_positions=-1,
        type_vocab_size=0,
        initializer_range=0.3,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.save_pretrained(backbone)
    tokenizer.save_pretrained(backbone)
    # llm-blender's load_ranker: the backbone's tokenizer, the collator's add_tokens, the resized embeddings.
    tokenizer = AutoTokenizer.from_pretrained(str(backbone))
    tokenizer.add_tokens(BLENDER_PREFIXES)
    torch.manual_seed(0)
    pretrained = DebertaV2Model(config)
    pretrained.resize_token_embeddings(len(tokenizer))
    ranker = BlenderCrossCompareReranker(pretrained, n_tasks=1, drop_out=0.05, tokenizer=tokenizer).eval()
    for layer in (ranker.head_layer[1], ranker.head_layer[4]):
        nn.init.normal_(layer.weight, std=0.3)
    checkpoint = root / "PairRM"
    checkpoint.mkdir()
    state_dict = dict(ranker.state_dict())
    state_dict["pretrained_model.embeddings.position_ids"] = torch.arange(512).expand((1, -1))
    torch.save(state_dict, checkpoint / "pytorch_model.bin")
    ranker_config = {
        "ranker_type": "pairranker",
        "model_type": "deberta",
        "model_name": str(backbone),
        "cache_dir": "./hf_models/deberta-v3-large/",
        "load_checkpoint": None,
        "source_maxlength": source_maxlength,
        "candidate_maxlength": candidate_maxlength,
        "n_tasks": 1,
        "num_pos": 5,
        "num_neg": 5,
        "sub_sampling_mode": "all_pair",
        "sub_sampling_ratio": 0.4,
        "loss_type": "instructgpt",
        "reduce_type": "linear",
        "inference_mode": "bubble",
        "drop_out": 0.05,
        "fp16": True,
        "device": None,
        **ranker_overrides,
    }
    (checkpoint / "config.json").write_text(json.dumps(ranker_config, indent=4))
    return checkpoint, ranker, tokenizer


def test_llm_blender_pairrm_checkpoint_loads_and_scores_like_llm_blender(tmp_path):
    checkpoint, ranker, tokenizer = write_llm_blender_checkpoint(tmp_path)
    judge = PairRMJudge.from_pretrained(str(checkpoint), device="cpu", batch_tokens=200, max_batch_size=3)
    # The budgets are the ranker config's, not the card's.
    assert (judge.encoder.source_max_length, judge.encoder.max_length) == (48, 96)
    long_source, long_a, long_b = "word " * 80, "answer " * 40, "reply " * 40
    prompts, a, b = [*INPUTS, long_source], [*CANDS_A, long_a], [*CANDS_B, long_b]
    want = []
    for prompt, x, y in zip(prompts, a, b):  # llm-blender's compare(mode="[A,B]"), one row at a time
        source_ids, source_mask, cand_ids, cand_mask = blender_collate(tokenizer, [prompt], [[x, y]], 48, 24)
        with torch.no_grad():
            want += ranker._forward(
                source_ids, source_mask, cand_ids[:, 0], cand_mask[:, 0], cand_ids[:, 1], cand_mask[:, 1]
            ).tolist()
    got = judge.score_ordered_pairs(prompts, a, b).tolist()
    assert got == pytest.approx(want, abs=1e-5)
    assert max(abs(x) for x in want) > 0.1  # real, distinct logits
    # Through load_judge too (the jobs' path), in the rewardbench format as well.
    loaded = load_judge("pairrm", str(checkpoint), device="cpu", pairrm_format="rewardbench")
    assert loaded.conversation_format == "rewardbench" and loaded.encoder.max_length == 96


def test_llm_blender_checkpoint_errors_name_the_problem(tmp_path):
    checkpoint, _, _ = write_llm_blender_checkpoint(tmp_path / "summa", ranker_type="summareranker")
    with pytest.raises(ValueError, match="ranker_type='summareranker'"):
        PairRMJudge.from_pretrained(str(checkpoint), device="cpu")
    checkpoint, _, _ = write_llm_blender_checkpoint(tmp_path / "other")
    other_tokenizer = tmp_path / "other-tokenizer"
    bigger = train_tiny_unigram_tokenizer(prefix_tokens=False)
    bigger.add_tokens(["<extra_0>", "<extra_1>"])  # not the vocabulary the checkpoint was trained with
    bigger.save_pretrained(other_tokenizer)
    with pytest.raises(ValueError, match="embeddings have .* rows"):
        PairRMJudge.from_pretrained(str(checkpoint), device="cpu", tokenizer_name_or_path=str(other_tokenizer))
    (checkpoint / "pytorch_model.bin").unlink()
    with pytest.raises(ValueError, match="neither of"):
        PairRMJudge.from_pretrained(str(checkpoint), device="cpu")


# --- TRL-style judges through TRLJudgeAdapter ----------------------------------------------------------------------


class LongerIsBetterJudge:
    """Written against TRL's BasePairwiseJudge: only ``judge(prompts, completions, shuffle_order=True)``."""

    def __init__(self):
        self.calls = []

    def judge(self, prompts, completions, shuffle_order=True):
        self.calls.append((list(prompts), [list(c) for c in completions], shuffle_order))
        return [0 if len(a) > len(b) else 1 for a, b in completions]


class FirstIsBetterJudge:
    """A judge with a pure position bias: it always picks the first completion."""

    def judge(self, prompts, completions, shuffle_order=True):
        return [0] * len(prompts)


class FailingJudge:
    def __init__(self, answer):
        self.answer = answer

    def judge(self, prompts, completions, shuffle_order=True):
        return [self.answer] * len(prompts)


def test_adapter_judges_both_orders_in_one_call_and_averages():
    trl_judge = LongerIsBetterJudge()
    judge = TRLJudgeAdapter(trl_judge)
    assert judge.compare(["p", "q"], ["long answer", "a"], ["b", "longer one"]) == [1.0, 0.0]
    ((prompts, completions, shuffle),) = trl_judge.calls
    assert shuffle is False and prompts == ["p", "p", "q", "q"]
    assert completions == [["long answer", "b"], ["b", "long answer"], ["a", "longer one"], ["longer one", "a"]]
    # A pure position bias cancels: each order picks its first completion, P = (1 + 0) / 2.
    assert TRLJudgeAdapter(FirstIsBetterJudge()).compare(["p"], ["x"], ["yy"]) == [0.5]
    # Our judge contract on top of it, cached like any judge.
    assert judge.judge(["p"], [["s", "long answer"]]) == [1]
    judge.compare(["p"], ["long answer"], ["b"])
    assert len(trl_judge.calls) == 2 and judge.num_scored_pairs == 6


def test_adapter_renders_conversations_as_trl_online_dpo_did():
    import jinja2

    from rlhf_pairs.judges.trl_adapter import SIMPLE_CHAT_TEMPLATE, render_simple_chat

    conversation = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi!"},
        {"role": "user", "content": "tell me a joke"},
    ]
    trl_rendered = jinja2.Environment().from_string(SIMPLE_CHAT_TEMPLATE).render(messages=conversation)
    assert (
        render_simple_chat(conversation) == trl_rendered == "User: hello\n\nAssistant: hi!\n\nUser: tell me a joke\n\n"
    )
    trl_judge = LongerIsBetterJudge()
    TRLJudgeAdapter(trl_judge).compare([conversation], ["a"], ["bb"])
    assert trl_judge.calls[0][0] == [trl_rendered, trl_rendered]
    custom = LongerIsBetterJudge()
    TRLJudgeAdapter(custom, format_prompt=lambda p: "custom").compare([conversation], ["a"], ["bb"])
    assert custom.calls[0][0] == ["custom", "custom"]


def test_adapter_failures_and_bad_answers():
    judge = TRLJudgeAdapter(FailingJudge(-1))
    assert judge.compare(["p"], ["a"], ["b"]) == [0.5] and judge.num_failed == 2
    with pytest.raises(ValueError, match=r"FailingJudge.judge failed \(-1\) on row 0"):
        TRLJudgeAdapter(FailingJudge(-1), on_failure="raise").compare(["p"], ["a"], ["b"])
    with pytest.raises(ValueError, match="FailingJudge.judge returned '0' for row 0"):
        TRLJudgeAdapter(FailingJudge("0")).compare(["p"], ["a"], ["b"])
    assert TRLJudgeAdapter(FailingJudge(np.int64(0))).compare(["p"], ["a"], ["b"]) == [0.5]
    with pytest.raises(TypeError, match="no `judge` method"):
        TRLJudgeAdapter(object())


def test_as_judge_wraps_only_trl_style_judges():
    native = LengthJudge()
    assert as_judge(native) is native
    wrapped = as_judge(LongerIsBetterJudge())
    assert isinstance(wrapped, TRLJudgeAdapter)
    with pytest.raises(TypeError, match="not a judge"):
        as_judge(object())


def test_trl_style_judge_ranks_and_rewards():
    trl_judge = LongerIsBetterJudge()
    candidates = [["bb", "a", "dddd", "ccc"], ["x", "yy"]]
    for method in ("knockout", "round_robin"):
        results = rank_candidates(TRLJudgeAdapter(trl_judge), ["p", "q"], candidates, method=method, seed=0)
        assert [(r.best, r.worst) for r in results] == [(2, 1), (1, 0)]
    # The reward function wraps it by itself (as_judge), in both TRL layouts.
    groups = PairwiseRewardFunction(LongerIsBetterJudge(), layout="groups")(
        prompts=["p"] * 3, completions=["a", "bbb", "cc"]
    )
    assert groups == [0.0, 1.0, 0.5]
    pairs = PairwiseRewardFunction(LongerIsBetterJudge(), layout="pairs")(
        prompts=["p", "q", "p", "q"], completions=["a", "bb", "aaa", "b"]
    )
    assert pairs == [0.0, 1.0, 1.0, 0.0]
