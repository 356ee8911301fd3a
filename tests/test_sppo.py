"""SPPO (iterate's ``mode: sppo``) against uclaml/SPPO at commit 5e61c4e90822fe526d8bbe1a50a6e85a85c30911: their data
rule (scripts/compute_prob.py) and loss (sppo/trainer.py) transcribed below and held against ours on random inputs,
their loader (sppo/run_sppo.py + sppo/alignment/data.py) reading our pairs file, the rank job's P matrix, and the
loop itself: a rule judge's preference learned, 1 vs 2 processes, kill and resume, config refusals, recipes."""

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_iterate import args as iterate_cli_args
from test_iterate import run_cli as iterate_run_cli
from test_iterate import weights

from rlhf_pairs.cli import main as cli
from rlhf_pairs.judges.base import RewardJudge
from rlhf_pairs.pairs import SPPO_COMMIT, build_sppo_pairs, sppo_choice
from rlhf_pairs.rank_dataset import rank_rows
from rlhf_pairs.scripts import iterate, run
from rlhf_pairs.scripts.iterate import make_parser
from rlhf_pairs.testing_utils import build_tiny_pair_lm
from rlhf_pairs.trainer.sppo_trainer import sppo_losses
from rlhf_pairs.utils.io import read_jsonl

THEIR_COMMIT = "5e61c4e90822fe526d8bbe1a50a6e85a85c30911"  # uclaml/SPPO, read for the transcriptions below
ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "sppo"
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Name a color."}],
    "Tell me a joke.",
    [
        {"role": "user", "content": "hello!"},
        {"role": "assistant", "content": "hi!"},
        {"role": "user", "content": "1+1?"},
    ],
    "Add 2 and 3.",
    "Say thanks.",
    "What is 42?",
    "Describe a fox.",
    "Explain rain.",
]
DATA_FILES = ("generate/candidates.jsonl", "rank/rankings.jsonl", "pairs/pairs.jsonl", "eval/completions.jsonl")


# ---- transcriptions of uclaml/SPPO at THEIR_COMMIT (kept as their code reads; not calls into ours) ----
def their_from_ranks(scores: np.ndarray, pairs: int = 5) -> list[list[list[float]]]:
    """scripts/compute_prob.py ``from_ranks`` L40-48: P from PairRM's per-response scores (rank.py saves float32)."""
    probs = []
    for idx, score in enumerate(scores):  # noqa: B007 (as they wrote it)
        prb = np.zeros((pairs, pairs))
        for i in range(pairs):
            for j in range(pairs):
                prb[i][j] = 1 / (1 + np.exp(score[j] - score[i]))
        prb = prb.tolist()
        probs.append(prb)
    return probs


def their_prepare_score(generated: list[list], probability: list, rm_scores: list, pairs: int = 5) -> pd.DataFrame:
    """scripts/compute_prob.py ``prepare_score`` L79-104 (``generated[i]``: the ``generate_i`` column, message
    lists). Their K is the literal 5 (``x[-5:]``, ``generate_0..generate_4``); ``pairs`` generalises it."""
    train = pd.DataFrame(
        {**{f"generate_{i}": generated[i] for i in range(pairs)}, "probability": probability, "rm_scores": rm_scores}
    )
    metrics = train["rm_scores"].apply(lambda x: np.array(x[-pairs:]))
    metrics_prob = train["probability"].apply(lambda x: np.stack(x).sum(axis=1))
    maxmin = metrics.apply(lambda x: [x.argmax(), x.argmin()])
    train_ordered = train[[*(f"generate_{i}" for i in range(pairs)), "probability"]]
    chosen = [train_ordered.iloc[i, maxmin[i][0]] for i in range(len(train_ordered))]
    rejected = [train_ordered.iloc[i, maxmin[i][1]] for i in range(len(train_ordered))]
    chosen_probs = [train_ordered["probability"].iloc[i][maxmin[i][0]][maxmin[i][1]] for i in range(len(train_ordered))]
    chosen_probs_win = [metrics_prob[i][maxmin[i][0]] / len(metrics_prob.iloc[0]) for i in range(len(metrics_prob))]
    chosen_probs_lose = [metrics_prob[i][maxmin[i][1]] / len(metrics_prob.iloc[0]) for i in range(len(metrics_prob))]
    return pd.DataFrame(
        {
            "chosen": chosen,
            "rejected": rejected,
            "chosen_probs": chosen_probs,
            "chosen_probs_win": chosen_probs_win,
            "chosen_probs_lose": chosen_probs_lose,
            "maxmin": list(maxmin),  # not written by them: the indices, for the comparison
        }
    )


def their_sppo_loss(
    beta, loss_type, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
    chosen_probs, chosen_probs_win, chosen_probs_lose,
):  # fmt: skip
    """sppo/trainer.py ``sppo_loss`` L849-878 (the sppo branches) and ``get_batch_loss_metrics`` L1067's mean."""
    logits_w = policy_chosen_logps - reference_chosen_logps
    logits_l = policy_rejected_logps - reference_rejected_logps
    if loss_type == "sppo":
        loss_w = (logits_w - (1 / beta) * (chosen_probs_win - 0.5)) ** 2
        loss_l = (logits_l - (1 / beta) * (chosen_probs_lose - 0.5)) ** 2
        losses = (loss_w + loss_l) / 2
    elif loss_type == "sppo_single":
        loss_w = (logits_w - (1 / beta) * (chosen_probs - 0.5)) ** 2
        loss_l = (logits_l + (1 / beta) * (chosen_probs - 0.5)) ** 2
        losses = (loss_w + loss_l) / 2
    return losses


def their_apply_chat_template(example, tokenizer, skip_system_message):
    """sppo/alignment/data.py ``apply_chat_template`` L31-71, the branch run_sppo.py takes (skip_system_message)."""
    if all(k in example.keys() for k in ("chosen", "rejected")):
        prompt_messages = example["chosen"][:-1]
        if skip_system_message:
            chosen_messages = example["chosen"]
            rejected_messages = example["rejected"]
            example["text_prompt"] = tokenizer.apply_chat_template(
                prompt_messages, tokenize=False, add_generate_prompt=True
            )
            example["text_chosen"] = tokenizer.apply_chat_template(
                chosen_messages, tokenize=False, add_generate_prompt=True
            )[len(example["text_prompt"]) :]
            example["text_rejected"] = tokenizer.apply_chat_template(
                rejected_messages, tokenize=False, add_generate_prompt=True
            )[len(example["text_prompt"]) :]
    else:
        raise ValueError(
            "Could not format example as dialogue for `sppo` task! Require `[chosen, rejected]` keys but found "
            f"{list(example.keys())}"
        )
    return example


def their_load_and_process_datasets(dataset_path, tokenizer):
    """sppo/run_sppo.py ``load_and_process_datasets`` L49-70 with data.py ``mix_datasets`` (frac 1.0, train only)."""
    from datasets import DatasetDict, concatenate_datasets, load_dataset

    dataset = load_dataset(str(dataset_path), split="train")
    raw_datasets = DatasetDict()
    raw_datasets["train"] = concatenate_datasets([dataset.select(range(int(1.0 * len(dataset))))]).shuffle(seed=42)
    column_names = list(raw_datasets["train"].features)
    column_names = [x for x in column_names if x not in ["chosen_probs", "chosen_probs_win", "chosen_probs_lose"]]
    raw_datasets = raw_datasets.map(
        their_apply_chat_template,
        fn_kwargs={"tokenizer": tokenizer, "skip_system_message": True},
        remove_columns=column_names,
    )
    for split in ["train"]:
        raw_datasets[split] = raw_datasets[split].rename_columns(
            {"text_prompt": "prompt", "text_chosen": "chosen", "text_rejected": "rejected"}
        )
    return raw_datasets


# ---- stand-in judges ----
class TableRewardJudge(RewardJudge):
    """A pointwise judge whose reward of a text is looked up (the texts are unique)."""

    def __init__(self, rewards: dict[str, float]):
        super().__init__(temperature=1.0)
        self.rewards = rewards

    def reward_batch(self, prompts, responses):
        return torch.tensor([self.rewards[text] for text in responses], dtype=torch.float64)


class TablePairJudge:
    """A pair judge: P(a beats b) looked up from one matrix per prompt (texts ``"<prompt>|<index>"``)."""

    def __init__(self, matrices: dict[str, list[list[float]]]):
        self.matrices = matrices

    def compare(self, prompts, responses_a, responses_b):
        out = []
        for a, b in zip(responses_a, responses_b):
            (key, i), (_, j) = a.split("|"), b.split("|")
            out.append(self.matrices[key][int(i)][int(j)])
        return out


def random_scores(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Float32 score rows, a third continuous, a third from few values (ties), some all equal."""
    rows = []
    for i in range(n):
        if i % 3 == 0:
            rows.append(rng.normal(0, 2, k))
        elif i % 3 == 1:
            rows.append(rng.integers(-2, 3, k) / 2)
        else:
            rows.append(np.full(k, rng.normal()) if i % 6 == 2 else rng.integers(0, 2, k) * 3.0)
    return np.array(rows, dtype=np.float32)


def summed_logps(path, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of the completion tokens of a collated preference batch, from a plain forward of ``path``."""
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(path)(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).logits[:, :-1]
    token_logps = logits.log_softmax(-1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    return (token_logps * batch["completion_mask"][:, 1:]).sum(1).chunk(2)


def messages(prompt: str, response: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]


# ---- the data rule ----
@pytest.mark.parametrize("score_dtype", [np.float32, np.float64])
def test_pointwise_judge_pairs_are_their_compute_prob_on_random_scores(score_dtype):
    """A pointwise judge (a reward model) is their PairRM case: scores -> P = sigmoid(s_i - s_j) -> argmax/argmin ->
    the three targets. Ours must pick the same chosen/rejected (exactly, first index on ties) with the same numbers;
    rank.py's scores are float32, so their P is float32-rounded: rel 1e-6 then, 1e-12 from float64 scores."""
    assert SPPO_COMMIT == THEIR_COMMIT
    rng = np.random.default_rng(0)
    scores = random_scores(rng, 240, 5).astype(score_dtype)
    texts = [[f"p{n}-r{j}" for j in range(5)] for n in range(len(scores))]
    judge = TableRewardJudge({t: float(s) for row, ts in zip(scores, texts) for t, s in zip(ts, row)})
    rows = [{"prompt": f"prompt {n}", "responses": ts} for n, ts in enumerate(texts)]
    ranked, _ = rank_rows(judge, rows, "round_robin", 0, True, True, prob_matrix=True)
    ours, counts = build_sppo_pairs(ranked)

    probability = their_from_ranks(scores)
    generated = [[messages(f"prompt {n}", texts[n][i]) for n in range(len(scores))] for i in range(5)]
    theirs = their_prepare_score(generated, probability, [list(map(float, s)) for s in scores])
    tol = 1e-6 if score_dtype == np.float32 else 1e-12
    kept = iter(ours)
    for n, row in theirs.iterrows():
        flat = [x for matrix_row in ranked[n]["prob_matrix"] for x in matrix_row]
        assert flat == pytest.approx([x for matrix_row in probability[n] for x in matrix_row], rel=tol, abs=tol)
        w, loser = row["maxmin"]
        if w == loser:  # every score tied: their pair of a response with itself; ours drops it
            assert len(set(scores[n].tolist())) == 1
            continue
        pair = next(kept)
        assert pair["chosen"] == row["chosen"] and pair["rejected"] == row["rejected"]
        for name in ("chosen_probs", "chosen_probs_win", "chosen_probs_lose"):
            assert pair[name] == pytest.approx(row[name], rel=tol), (n, name)
    assert next(kept, None) is None
    tied = int((theirs["maxmin"].map(lambda m: m[0] == m[1])).sum())
    assert tied > 0 and counts == {"kept": len(scores) - tied, "not_ranked": 0, "identical": tied, "below_margin": 0}


def test_a_pointwise_judge_without_preference_from_scores_fills_p_with_one_compare_call():
    """A pointwise judge that only has score_responses and compare (e.g. a served reward model): every ordered pair
    in one batched compare call, each entry on its own (not 1 - the other order)."""

    class Scored:
        calls = 0

        def score_responses(self, prompts, responses):
            return [float(len(text)) for text in responses]

        def compare(self, prompts, responses_a, responses_b):
            Scored.calls += 1
            return [1 / (1 + math.exp(len(b) - len(a))) for a, b in zip(responses_a, responses_b)]

    rows = [{"prompt": "p", "responses": ["a", "abc", "ab"]}, {"prompt": "q", "responses": ["xy", "x"]}]
    ranked, stats = rank_rows(Scored(), rows, "round_robin", 0, True, False, prob_matrix=True)
    assert Scored.calls == stats.compare_calls == 2  # one for the margins, one for every matrix entry
    sigmoid = lambda d: 1 / (1 + math.exp(-d))  # noqa: E731
    assert ranked[0]["prob_matrix"] == [[0.5, sigmoid(-2), sigmoid(-1)], [sigmoid(2), 0.5, sigmoid(1)],
                                        [sigmoid(1), sigmoid(-1), 0.5]]  # fmt: skip
    assert build_sppo_pairs(ranked)[0][0]["chosen"][-1]["content"] == "abc"


@pytest.mark.parametrize("k", [2, 3, 5, 7])
def test_pair_judge_pairs_are_their_rule_on_the_row_means(k):
    """A general pair judge: P from its ``compare`` (round robin), each response's score the row mean of P, then
    their prepare_score as written (K generalised from 5): same indices, same targets."""
    rng = np.random.default_rng(k)
    matrices = {}
    for n in range(120):
        upper = rng.uniform(0, 1, (k, k)) if n % 2 else rng.integers(0, 3, (k, k)) / 2  # exact ties every other row
        p = np.full((k, k), 0.5)
        for i in range(k):
            for j in range(i + 1, k):
                p[i][j], p[j][i] = upper[i][j], 1.0 - upper[i][j]
        matrices[f"q{n}"] = p.tolist()
    rows = [{"prompt": key, "responses": [f"{key}|{j}" for j in range(k)]} for key in matrices]
    ranked, _ = rank_rows(TablePairJudge(matrices), rows, "round_robin", 0, True, True, prob_matrix=True)
    ours, counts = build_sppo_pairs(ranked)

    probability = [ranked[n]["prob_matrix"] for n in range(len(rows))]
    assert probability == list(matrices.values())  # the matrix is the judge's, both orders
    row_means = [[math.fsum(r) / k for r in matrix] for matrix in probability]  # our per-response score
    generated = [[messages(row["prompt"], row["responses"][i]) for row in rows] for i in range(k)]
    theirs = their_prepare_score(generated, probability, row_means, pairs=k)
    kept = iter(ours)
    for n, row in theirs.iterrows():
        if row["maxmin"][0] == row["maxmin"][1]:
            continue
        pair = next(kept)
        assert pair["chosen"] == row["chosen"] and pair["rejected"] == row["rejected"]
        for name in ("chosen_probs", "chosen_probs_win", "chosen_probs_lose"):
            assert pair[name] == pytest.approx(row[name], rel=1e-12, abs=1e-15), (n, name)
    assert next(kept, None) is None and counts["kept"] == len(ours) and counts["identical"] == len(rows) - len(ours)


def test_pairrm_like_logit_matrices_can_rank_otherwise_than_their_scores():
    """What the docstring of sppo_choice says: with PairRM, their score is LLM-Blender's mean logit margin s_i; a
    pair judge's P ranks by the row mean of the probabilities, which a lopsided win can order differently."""
    d = np.array([[0.0, 10.0, -1.0], [-10.0, 0.0, -1.0], [1.0, 1.0, 0.0]])  # d[i][j]: logit of "i beats j"
    s = d.mean(axis=1)  # get_scores_from_cmps: mean_j (C[i][j] - C[j][i]) for an antisymmetric C
    p = (1 / (1 + np.exp(-d))).tolist()
    assert int(np.argmax(s)) == 0 and sppo_choice(p)["chosen"] == 2
    assert sppo_choice(p, scores=s.tolist())["chosen"] == 0  # given the scores, ours is theirs


def test_sppo_pairs_drop_and_count_like_the_other_modes():
    p = [[0.5, 0.9, 0.8], [0.1, 0.5, 0.4], [0.2, 0.6, 0.5]]
    rows = [
        {"prompt": "a", "responses": ["x", "y", "z"], "best": 0, "worst": 1, "skipped": None, "prob_matrix": p,
         "scores": None, "num_scored": 0},
        {"prompt": "b", "responses": ["x"], "best": 0, "worst": 0, "skipped": "fewer than 2 candidates",
         "prob_matrix": None, "scores": None, "num_scored": 0},
        {"prompt": "c", "responses": ["x", "x"], "best": 0, "worst": 1, "skipped": None,
         "prob_matrix": [[0.5, 0.5], [0.5, 0.5]], "scores": None, "num_scored": 0},
    ]  # fmt: skip
    pairs, counts = build_sppo_pairs(rows)
    assert counts == {"kept": 1, "not_ranked": 1, "identical": 1, "below_margin": 0}
    assert pairs == [{
        "chosen": messages("a", "x"), "rejected": messages("a", "y"), "chosen_probs": 0.9,
        "chosen_probs_win": (0.5 + 0.9 + 0.8) / 3, "chosen_probs_lose": (0.1 + 0.5 + 0.4) / 3,
    }]  # fmt: skip
    assert build_sppo_pairs(rows, min_margin=0.95)[1]["below_margin"] == 2  # checked before identical, as dpo
    with pytest.raises(ValueError, match="no `prob_matrix`"):
        build_sppo_pairs([{**rows[0], "prob_matrix": None}])


# ---- the loss ----
@pytest.mark.parametrize("loss_type", ["sppo", "sppo_single"])
@pytest.mark.parametrize("beta", [0.001, 0.1])
def test_loss_is_their_sppo_loss_on_random_inputs(loss_type, beta):
    g = torch.Generator().manual_seed(0)
    logps = [-50 * torch.rand(32, generator=g) for _ in range(4)]  # float32, as a model's summed log-probs
    probs = [torch.rand(32, generator=g, dtype=torch.float64) for _ in range(3)]
    theirs = their_sppo_loss(beta, loss_type, *logps, *probs)
    ours = sppo_losses(logps[0] - logps[2], logps[1] - logps[3], *probs, beta=beta, loss_type=loss_type)
    assert ours.dtype == theirs.dtype == torch.float64
    assert torch.equal(ours, theirs) and torch.equal(ours.mean(), theirs.mean())


def test_the_trainer_computes_their_loss_from_the_policy_and_reference(tmp_path):
    """Through SPPOTrainer: the probability columns survive TRL's preprocessing and collation (in row order, float64)
    and the loss is theirs on the summed response log-probs of the policy and a *different* reference; with LoRA the
    reference is the adapter-free policy."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig

    from rlhf_pairs.trainer.sppo_trainer import SPPOTrainer

    policy_path = build_tiny_pair_lm(tmp_path / "policy", seed=1)
    ref_path = build_tiny_pair_lm(tmp_path / "ref", seed=2)
    columns = ("chosen_probs", "chosen_probs_win", "chosen_probs_lose")
    rows = [
        {"chosen": messages(f"question {i}?", "yes " * (i + 1)), "rejected": messages(f"question {i}?", f"no {i}"),
         "chosen_probs": 0.5 + i / 10, "chosen_probs_win": 0.55 + i / 20, "chosen_probs_lose": 0.45 - i / 20}
        for i in range(4)
    ]  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(policy_path)

    def trainer_for(args, rows, ref_model=None, peft_config=None):
        model = AutoModelForCausalLM.from_pretrained(policy_path)
        return SPPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=Dataset.from_list(rows),
                           processing_class=tokenizer, peft_config=peft_config)  # fmt: skip

    for loss_type in ("sppo", "sppo_single"):
        args = DPOConfig(str(tmp_path / "out"), loss_type=loss_type, beta=0.1, use_cpu=True, bf16=False,
                         report_to="none", max_length=128, per_device_train_batch_size=4)  # fmt: skip
        trainer = trainer_for(args, rows, ref_model=AutoModelForCausalLM.from_pretrained(ref_path))
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        for name in columns:
            assert batch[name].dtype == torch.float64 and batch[name].tolist() == [r[name] for r in rows]
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, batch)
        policy, reference = summed_logps(policy_path, batch), summed_logps(ref_path, batch)
        expected = their_sppo_loss(0.1, loss_type, *policy, *reference, *(batch[name] for name in columns))
        assert loss.item() == pytest.approx(expected.mean().item(), rel=1e-5)
        assert (policy[0] - reference[0]).abs().max() > 0.1  # a real reference, not the policy again
    # LoRA: the reference is the policy with its adapter disabled (TRL's), so a fresh adapter gives r = 0 exactly.
    trainer = trainer_for(args, rows, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch)
    zero = torch.zeros(4, dtype=torch.float32)
    assert (
        loss.item()
        == their_sppo_loss(0.1, "sppo_single", zero, zero, zero, zero, *(batch[n] for n in columns)).mean().item()
    )
    with pytest.raises(ValueError, match="chosen_probs"):
        trainer_for(args, [{k: r[k] for k in ("chosen", "rejected")} for r in rows])
    with pytest.raises(ValueError, match="loss_type"):
        trainer_for(DPOConfig(str(tmp_path / "out"), use_cpu=True, bf16=False), rows)


# ---- the rank job's P matrix ----
def test_rank_writes_the_p_matrix_with_round_robin_only(tiny_pair_lm_path, tmp_path):
    from rlhf_pairs import PairPreferenceJudge

    data = tmp_path / "candidates.jsonl"
    rows = [{"prompt": "Say hi.", "responses": ["hi", "hello there", "hi", "hey you"]},
            {"prompt": "One?", "responses": ["1"]}]  # fmt: skip
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ranked.jsonl"
    base = ["rank", "--dataset_name", str(data), "--output", str(out), "--judge", str(tiny_pair_lm_path)]
    assert cli([*base, "--ranking_method", "round_robin", "--prob_matrix", "true"]) == 0
    ranked = read_jsonl(out)
    assert ranked[1]["prob_matrix"] is None and ranked[1]["skipped"] is not None
    p = ranked[0]["prob_matrix"]
    texts = rows[0]["responses"]
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path))
    for i in range(4):
        assert p[i][i] == 0.5
        for j in range(i + 1, 4):
            assert p[i][j] + p[j][i] == pytest.approx(1.0, abs=1e-12)
            expected = 0.5 if texts[i] == texts[j] else judge.compare(["Say hi."], [texts[i]], [texts[j]])[0]
            assert p[i][j] == pytest.approx(expected, abs=1e-6)
    assert [math.fsum(r) / 4 for r in p] == pytest.approx([(s * 3 + 0.5) / 4 for s in ranked[0]["scores"]])
    with pytest.raises(ValueError, match="`prob_matrix` needs every pair judged: ranking_method round_robin"):
        cli([*base, "--ranking_method", "knockout", "--prob_matrix", "true"])


# ---- the loop ----
def iterate_args(inputs, output_dir, *extra):
    return iterate_cli_args(inputs, output_dir, *extra, recipe=RECIPES / "tiny_cpu.yaml")


def run_cli(inputs, output_dir, *extra, kill_at=None):
    """``rlhf-pairs iterate`` with the SPPO tiny recipe in a fresh process with one thread."""
    return iterate_run_cli(inputs, output_dir, *extra, kill_at=kill_at, recipe=RECIPES / "tiny_cpu.yaml")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_pair_lm_path):
    root = tmp_path_factory.mktemp("sppo")
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    return {"root": root, "policy": build_tiny_pair_lm(root / "policy", seed=1), "judge": tiny_pair_lm_path,
            "prompts": prompts}  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(inputs):
    """Two SPPO rounds with the tiny pair LM as the judge (the recipe: 4 prompts x 5 candidates per round)."""
    out = inputs["root"] / "uninterrupted"
    run_cli(inputs, out)
    return out


def test_two_sppo_rounds_follow_the_p_matrix(inputs, uninterrupted):
    out = uninterrupted
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [m["round"] for m in metrics] == [1, 2]
    for k, m in zip((1, 2), metrics):
        rankings = read_jsonl(out / f"round_{k}" / "rank" / "rankings.jsonl")
        pairs = read_jsonl(out / f"round_{k}" / "pairs" / "pairs.jsonl")
        assert all(len(r["prob_matrix"]) == 5 and r["num_comparisons"] == 10 for r in rankings)  # all 10 pairs
        expected, counts = build_sppo_pairs(rankings)
        assert pairs == expected and m["pairs/kept"] == counts["kept"] == len(pairs) >= 3
        assert m["pairs/identical"] == counts["identical"]
        for pair, row in zip(pairs, (r for r in rankings if r["skipped"] is None)):
            prompt = row["prompt"] if isinstance(row["prompt"], list) else [{"role": "user", "content": row["prompt"]}]
            assert pair["chosen"][:-1] == pair["rejected"][:-1] == prompt  # their format: the prompt, then the answer
        wins = [p["chosen_probs_win"] for p in pairs]
        assert m["pairs/mean_chosen_probs_win"] == pytest.approx(sum(wins) / len(wins))
        assert m["pairs/std_chosen_probs_win"] is not None and m["pairs/mean_chosen_probs_lose"] < 0.5 < min(wins)
        assert math.isfinite(m["train/train_loss"]) and m["train/steps"] >= 1
        stage = json.loads((out / f"round_{k}" / "rank" / "stage.json").read_text())
        assert stage["fingerprint"]["prob_matrix"] is True and stage["fingerprint"]["method"] == "round_robin"
    summary = json.loads((out / "round_2" / "train" / "stage.json").read_text())["summary"]
    assert summary["reference"] == summary["policy"] == str(out / "round_1" / "train")  # reference: previous
    w0, w1 = weights(inputs["policy"]), weights(out / "round_1" / "train")
    assert any(not torch.equal(w0[key], w1[key]) for key in w0)


def test_their_loader_reads_our_pairs_file(inputs, uninterrupted):
    """run_sppo.py's loading code (transcribed above) on round 1's pairs folder (`dataset_mixer: {<it>: 1.0}`):
    their columns and texts, the rows of pairs.jsonl."""
    from transformers import AutoTokenizer

    folder = uninterrupted / "round_1" / "pairs"
    pairs = read_jsonl(folder / "pairs.jsonl")
    tokenizer = AutoTokenizer.from_pretrained(inputs["policy"])
    train = their_load_and_process_datasets(folder, tokenizer)["train"]
    assert set(train.column_names) == {"prompt", "chosen", "rejected", "chosen_probs", "chosen_probs_win",
                                       "chosen_probs_lose"}  # fmt: skip
    assert len(train) == len(pairs)
    by_win = {pair["chosen_probs_win"]: pair for pair in pairs}
    for row in train:
        pair = by_win[row["chosen_probs_win"]]
        assert (row["chosen_probs"], row["chosen_probs_lose"]) == (pair["chosen_probs"], pair["chosen_probs_lose"])
        assert row["prompt"] == tokenizer.apply_chat_template(pair["chosen"][:-1], tokenize=False)
        assert row["prompt"] + row["chosen"] == tokenizer.apply_chat_template(pair["chosen"], tokenize=False)
        assert row["prompt"] + row["rejected"] == tokenizer.apply_chat_template(pair["rejected"], tokenize=False)
        assert pair["chosen"][-1]["content"].strip() in row["chosen"]


def test_two_processes_give_the_same_pairs(inputs, uninterrupted, launch_two_processes):
    out = inputs["root"] / "two_processes"
    output = launch_two_processes("iterate.py", iterate_args(inputs, out, "--rounds", "1"), cwd=inputs["root"])
    assert "2 process(es)" in output
    for name in DATA_FILES[:3]:
        assert (out / "round_1" / name).read_bytes() == (uninterrupted / "round_1" / name).read_bytes()
    assert (out / "round_1" / "train" / "DONE").exists()


def test_kill_and_resume_equals_an_uninterrupted_run(inputs, uninterrupted):
    out = inputs["root"] / "resumed"
    killed = run_cli(inputs, out, kill_at="round_2/rank:shard#1")  # SIGKILL after round 2's first ranking shard
    assert killed.returncode == -9 and not (out / "round_2" / "rank").exists()
    killed = run_cli(inputs, out, kill_at="round_2/train:step#2")  # after checkpoint-1 of round 2's training
    assert killed.returncode == -9 and (out / "round_2" / "train.partial" / "checkpoint-1").is_dir()
    done = run_cli(inputs, out)
    assert "round_2/rank: finished earlier, reused" in done.stderr
    assert json.loads((out / "round_2" / "train" / "stage.json").read_text())["summary"]["resumed_from"] == (
        "checkpoint-1"
    )
    for k in (1, 2):
        for name in DATA_FILES:
            assert (out / f"round_{k}" / name).read_bytes() == (uninterrupted / f"round_{k}" / name).read_bytes()
        a, b = weights(out / f"round_{k}" / "train"), weights(uninterrupted / f"round_{k}" / "train")
        assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    run_specific = {"train/resumed_from", "train/policy", "train/reference"}
    for a, b in zip(read_jsonl(out / "metrics.jsonl"), read_jsonl(uninterrupted / "metrics.jsonl"), strict=True):
        assert {key: v for key, v in a.items() if key not in run_specific} == pytest.approx(
            {key: v for key, v in b.items() if key not in run_specific}, abs=1e-6
        )


def test_sppo_with_a_rule_judge_moves_the_policy_its_way(tmp_path):
    """The concise rule judge (shorter answers win; pointwise, so P = sigmoid(word gap / 4) from its scores): one
    SPPO round on 128 prompts, then the new policy's greedy answers judged against the starting policy's on 64
    held-out prompts."""
    import itertools

    subjects = ["the sea", "a fox", "autumn", "the moon", "bread", "a river", "music", "snow", "a city", "the sun",
                "coffee", "a garden", "trains", "rain", "a library", "mountains"]  # fmt: skip
    asks = ["Describe", "Write a poem about", "Explain", "Tell me about", "Give three facts about", "Summarize",
            "Praise", "Compare winter and", "Write a story about", "List uses of", "Criticize", "Ask a question about"]  # fmt: skip
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"{a} {s}."}) + "\n" for a, s in itertools.product(asks, subjects))
    )
    inputs = {"policy": build_tiny_pair_lm(tmp_path / "policy", seed=1), "judge": "concise", "prompts": prompts}
    out = tmp_path / "run"
    run_cli(inputs, out, "--judge_type", "rlhf_pairs.judges.rules:ConciseJudge", "--rounds", "1",
            "--prompts_per_round", "128", "--num_eval_prompts", "64", "--max_new_tokens", "24", "--shard_size", "32",
            "--generation_batch_size", "32", "--per_device_train_batch_size", "8", "--num_train_epochs", "4",
            "--learning_rate", "1e-3")  # fmt: skip
    (m,) = read_jsonl(out / "metrics.jsonl")
    assert m["rank/comparisons"] == 0 and m["rank/scored"] == 128 * 5  # ranked by its scores, P from them
    assert m["eval/num_prompts"] == 64 and m["eval/ci_low"] > 0.5, m  # the 95% interval excludes a coin flip
    completions = read_jsonl(out / "round_1" / "eval" / "completions.jsonl")
    new, previous = ([len(c[key].split()) for c in completions] for key in ("new", "previous"))
    assert sum(new) < sum(previous)
    # A pointwise judge's pairs are chosen on its scores, as theirs on PairRM's (first argmax / argmin).
    for row in read_jsonl(out / "round_1" / "rank" / "rankings.jsonl"):
        choice = sppo_choice(row["prob_matrix"], row["scores"])
        assert choice["chosen"] == int(np.argmax(row["scores"])) and choice["rejected"] == int(np.argmin(row["scores"]))


# ---- configuration ----
def test_bad_sppo_configs_name_the_problem(inputs, tmp_path):
    def main(*extra):
        return run(iterate, iterate_args(inputs, tmp_path, *extra))

    with pytest.raises(ValueError, match="ranking_method: round_robin"):
        main("--ranking_method", "knockout")
    with pytest.raises(ValueError, match="pair_strategy"):
        main("--pair_strategy", "max_random")
    with pytest.raises(ValueError, match=r"mode: sppo.*loss_type"):
        main("--loss_type", "sigmoid")
    with pytest.raises(ValueError, match="only `mode: sppo` builds"):
        main("--mode", "dpo", "--ranking_method", "knockout")


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_sppo_recipes_parse(recipe):
    # GPU recipes ask for bf16, which TrainingArguments refuses on a CPU-only machine.
    argv = ["--config", str(recipe), "--bf16", "false"]
    if recipe.name.startswith("tiny"):
        argv += ["--dataset_name", "x.jsonl", "--judge", "j"]
    config, judge, training, model = make_parser(argv=argv).parse_args_and_config(args=argv)
    assert type(training).__name__ == "DPOConfig" and config.mode == "sppo" and training.loss_type == ["sppo"]
    assert config.ranking_method == "round_robin" and config.num_candidates == 5 and training.beta == 0.001
    assert config.reference == "previous" and training.optim == "rmsprop"
    if recipe.name.startswith("llama-3"):  # uclaml/SPPO's Llama-3 run (see the recipe's sources)
        assert model.model_name_or_path == "meta-llama/Meta-Llama-3-8B-Instruct" and config.rounds == 3
        assert config.dataset_name == "UCLA-AGI/data-mistral-7b-instruct-sppo-iter{round}"
        assert (training.learning_rate, training.lr_scheduler_type, training.warmup_steps) == (5e-7, "linear", 0.1)
        assert training.per_device_train_batch_size * training.gradient_accumulation_steps * 8 == 64
        assert (training.max_length, training.num_train_epochs, training.seed) == (1024, 1, 42)
        assert (config.generation_temperature, config.generation_top_p, config.max_new_tokens) == (0.7, 0.9, 2048)
        assert training.activation_checkpointing and training.activation_checkpointing_kwargs == {
            "use_reentrant": False
        }
        assert judge.judge_type in ("pairrm", "pair_lm") and judge.judge.startswith(("llm-blender/", "RLHFlow/"))
