"""RLHFlow Online-RLHF's files plug in (issue 14, items 4-8): the rank output trains in TRL's DPOTrainer as it is
(conversational chosen/rejected for message prompts), its ``rewards`` column makes RLHFlow's ``run_dpo.py`` pick our
pairs (ties included), system turns follow one rule in every job, RLHFlow's older LMFlow files load, and chat
strings already rendered with a template are parsed back into messages (or named in a warning)."""

import json
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rlhf_pairs import PairPreferenceJudge, rank_candidates
from rlhf_pairs.data_utils import judge_prompt, load_rows, parse_rendered_chat, prepare_prompt
from rlhf_pairs.pairs import build_dpo_pairs, preference_columns, ranking_rewards
from rlhf_pairs.rank_dataset import rank_rows
from rlhf_pairs.scripts import rank, run
from rlhf_pairs.utils.io import read_jsonl

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
WORDS = "sun moon river stone light code tree bird wind rain".split()


def rank_job(data, out, judge, *extra) -> dict:
    """``rlhf-pairs rank`` in this process; returns the summary."""
    argv = ["--dataset_name", data, "--output", out, "--judge", judge, "--shard_size", "2", *extra]
    return run(rank, list(map(str, argv)))


def candidate_rows(prompts) -> list[dict]:
    """One row per prompt with 3 distinct responses (so every row is ranked and makes a pair)."""
    return [
        {"prompt": p, "responses": [" ".join(WORDS[(i + j + k) % 10] for k in range(1 + j)) for j in range(3)]}
        for i, p in enumerate(prompts)
    ]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def llama3(messages, generation_prompt=True) -> str:
    """A conversation rendered as Llama-3-Instruct's chat template does (what RLHFlow's older generation stored)."""
    text = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content']}<|eot_id|>" for m in messages
    )
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n\n" if generation_prompt else "")


def chatml(messages) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"


# ---------------------------------------------------------------------------------------------------------------------
# 4. The rank output trains in TRL's DPOTrainer unchanged
# ---------------------------------------------------------------------------------------------------------------------

MESSAGE_PROMPTS = [
    [SYSTEM, {"role": "user", "content": "Say something about the sun."}],  # RLHFlow's context_messages
    [{"role": "user", "content": "Name a tree."}],
    [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "rain?"},
    ],
    [{"role": "user", "content": "Write about a bird."}],
]
STRING_PROMPTS = ["Say something about the sun.", "Name a tree.", "Write about a bird.", "Count to three."]


@pytest.mark.parametrize("prompts", [MESSAGE_PROMPTS, STRING_PROMPTS], ids=["message_prompts", "string_prompts"])
def test_ranked_file_trains_in_dpo_trainer(prompts, tiny_pair_lm_path, tmp_path):
    import datasets
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer
    from trl.data_utils import is_conversational

    from rlhf_pairs.testing_utils import build_tiny_pair_lm

    data = write_jsonl(tmp_path / "candidates.jsonl", candidate_rows(prompts))
    ranked = tmp_path / "ranked.jsonl"
    rank_job(data, ranked, tiny_pair_lm_path)
    dataset = datasets.load_dataset("json", data_files=str(ranked), split="train")
    conversational = isinstance(prompts[0], list)
    for row in dataset:  # every column TRL may look at agrees with the prompt's format
        for key in ("prompt", "chosen", "rejected"):
            assert is_conversational({key: row[key]}) == conversational, (key, row[key])
    assert [r["prompt"] for r in read_jsonl(ranked)] == prompts  # the prompt as given (system turn included)

    policy = build_tiny_pair_lm(tmp_path / "policy", seed=1)
    model = AutoModelForCausalLM.from_pretrained(policy)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    tokenizer.pad_token = tokenizer.eos_token
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"),
        max_steps=1,
        per_device_train_batch_size=2,
        learning_rate=1e-3,
        max_length=128,
        use_cpu=True,
        report_to="none",
        bf16=False,
        save_strategy="no",
        disable_tqdm=True,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert math.isfinite(result.training_loss)
    assert any(not torch.equal(before[name], p) for name, p in model.named_parameters())


def test_one_rule_for_the_preference_format():
    """The rank output and iterate's DPO pairs take their chosen/rejected format from the same function."""
    messages = [{"role": "user", "content": "q"}]
    assert preference_columns("q", "a", "b") == {"chosen": "a", "rejected": "b"}
    assert preference_columns(messages, "a", "b") == {
        "chosen": [{"role": "assistant", "content": "a"}],
        "rejected": [{"role": "assistant", "content": "b"}],
    }
    row = {"prompt": "q", "responses": ["a", "b"], "best": 0, "worst": 1, "margin": 0.9, "skipped": None}
    pairs, _ = build_dpo_pairs([row])  # iterate trains a chat policy: a string prompt becomes a user turn
    assert pairs[0] == {"prompt": messages, **preference_columns(messages, "a", "b"), "margin": 0.9}


# ---------------------------------------------------------------------------------------------------------------------
# 5. The rewards column: RLHFlow's run_dpo.py picks our best and worst
# ---------------------------------------------------------------------------------------------------------------------


def rlhflow_pairs(samples, choose_type="max_min"):
    """Transcription of RLHFlow Online-RLHF's ``dpo_iteration/run_dpo.py`` ``prepare_data`` pair choice (commit
    3a00ed83c79a9b748550a631d3f4b01140d2925c), without the tokenizer: (chosen, rejected) indices per kept sample."""
    pairs = []
    for sample in samples:
        if choose_type == "max_random":
            idx0 = np.argmax(sample["rewards"])
            idx1 = 1 if idx0 == 0 else 0
        else:
            idx0 = np.argmax(sample["rewards"])
            idx1 = np.argmin(sample["rewards"])
        if sample["rewards"][idx0] > sample["rewards"][idx1]:
            pairs.append((int(idx0), int(idx1)))
        elif sample["rewards"][idx0] < sample["rewards"][idx1]:
            pairs.append((int(idx1), int(idx0)))
        else:
            pairs.append(None)  # equal rewards: no pair
    return pairs


class LengthJudge:
    """The longer text wins; equal lengths tie at exactly 0.5 (so round robin scores tie)."""

    def compare(self, prompts, responses_a, responses_b):
        return [0.5 if len(a) == len(b) else float(len(a) > len(b)) for a, b in zip(responses_a, responses_b)]


TIE_ROWS = [
    {"prompt": "p0", "responses": ["x", "y", "a longer one", "z"]},  # three share the lowest score
    {"prompt": "p1", "responses": ["a", "b"]},  # everything ties
    {"prompt": "p2", "responses": ["bb", "a", "ccc", "dddd", "e"]},  # two share the lowest score, apart
    {"prompt": "p3", "responses": ["one", "three", "fifteen"]},  # no tie
]


@pytest.mark.parametrize("method", ["round_robin", "knockout"])
def test_rlhflow_picks_our_best_and_worst_also_with_ties(method):
    out, _ = rank_rows(LengthJudge(), TIE_ROWS, method, seed=0, find_worst=True)
    if method == "round_robin":
        assert np.argmin(out[0]["scores"]) != out[0]["worst"]  # the raw scores would make numpy pick another
    for row in out:
        rewards = row["rewards"]
        assert len(rewards) == len(row["responses"])
        assert (np.argmax(rewards), np.argmin(rewards)) == (row["best"], row["worst"])
    assert rlhflow_pairs(out) == [(row["best"], row["worst"]) for row in out]
    assert [p[0] for p in rlhflow_pairs(out, "max_random")] == [row["best"] for row in out]
    if method == "round_robin":
        assert out[3]["rewards"] == out[3]["scores"]  # no tie at the bottom: the mean win probabilities as they are
        for row in out:  # only the worst's reward moves, by one float step
            others = [j for j in range(len(row["rewards"])) if j != row["worst"]]
            assert [row["rewards"][j] for j in others] == [row["scores"][j] for j in others]
            assert row["rewards"][row["worst"]] in (
                row["scores"][row["worst"]],
                math.nextafter(row["scores"][row["worst"]], -math.inf),
            )
    else:
        assert all(sorted(set(row["rewards"])) in ([0.0, 1.0], [0.0, 0.5, 1.0]) for row in out)


def test_rewards_of_skipped_rows_and_without_a_worst():
    assert ranking_rewards(1, 0, 0, None) == [0.5] and ranking_rewards(0, None, None, None) == []
    assert rlhflow_pairs([{"rewards": [0.5]}]) == [None]  # one response: run_dpo.py makes no pair
    assert ranking_rewards(3, 1, None, None) == [0.5, 1.0, 0.5]  # knockout with find_worst=False


def test_rlhflow_reads_the_ranked_file(tiny_pair_lm_path, tmp_path):
    """RLHFlow's DPO stage reads our file as it reads its own annotated file: load_dataset("json"), then
    prompt/responses/rewards per sample."""
    import datasets

    data = write_jsonl(tmp_path / "candidates.jsonl", candidate_rows(MESSAGE_PROMPTS))
    ranked = tmp_path / "ranked.jsonl"
    rank_job(data, ranked, tiny_pair_lm_path, "--ranking_method", "round_robin")
    samples = datasets.load_dataset("json", data_files=str(ranked), split="train")
    ours = read_jsonl(ranked)
    assert rlhflow_pairs(samples) == [(r["best"], r["worst"]) for r in ours]
    assert [s["prompt"] for s in samples] == MESSAGE_PROMPTS


# ---------------------------------------------------------------------------------------------------------------------
# 6. System turns: one rule, counted, with an option to refuse
# ---------------------------------------------------------------------------------------------------------------------


def test_system_turns_are_merged_for_the_judge_and_counted(tiny_pair_lm_path, tmp_path, caplog):
    rows = candidate_rows(MESSAGE_PROMPTS)
    data = write_jsonl(tmp_path / "candidates.jsonl", rows)
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    for mode, count_key in (("merge", "system_merged"), ("drop", "system_dropped")):
        out = tmp_path / f"{mode}.jsonl"
        with caplog.at_level(logging.INFO):
            summary = rank_job(data, out, tiny_pair_lm_path, "--system_message", mode)
        assert summary[count_key] == 1 and summary["ranked"] == len(rows)
        assert f"1 {count_key}" in caplog.text  # the summary line says it
        ranked = read_jsonl(out)
        assert [r["prompt"] for r in ranked] == MESSAGE_PROMPTS  # the output keeps the prompt as given
        expected = rank_candidates(
            judge, [judge_prompt(r["prompt"], mode) for r in rows], [r["responses"] for r in rows]
        )
        assert [(r["best"], r["worst"]) for r in ranked] == [(e.best, e.worst) for e in expected]
    merged = judge_prompt(MESSAGE_PROMPTS[0], "merge")
    assert merged == [{"role": "user", "content": "You are a terse assistant.\n\nSay something about the sun."}]


def test_system_message_error_refuses_naming_the_line(tiny_pair_lm_path, tmp_path):
    data = write_jsonl(tmp_path / "candidates.jsonl", candidate_rows(MESSAGE_PROMPTS[1:] + MESSAGE_PROMPTS[:1]))
    out = tmp_path / "ranked.jsonl"
    with pytest.raises(ValueError, match=r"candidates.jsonl, line 4: prompt` starts with a system message"):
        rank_job(data, out, "/nonexistent/judge", "--system_message", "error")  # before the judge loads
    with pytest.raises(ValueError, match="system_message"):
        rank_job(data, out, tiny_pair_lm_path, "--system_message", "keep")


def test_a_changed_system_message_over_finished_shards_is_refused(tiny_pair_lm_path, tmp_path):
    data = write_jsonl(tmp_path / "candidates.jsonl", candidate_rows(MESSAGE_PROMPTS))
    out = tmp_path / "ranked.jsonl"
    rank_job(data, out, tiny_pair_lm_path, "--max_shards", "1")
    with pytest.raises(ValueError, match=r"changed: system_message \(None -> 'drop'\)"):
        rank_job(data, out, tiny_pair_lm_path, "--system_message", "drop")
    rank_job(data, out, tiny_pair_lm_path)  # the default resumes
    assert len(read_jsonl(out)) == len(MESSAGE_PROMPTS)


def test_shards_of_an_older_release_are_ranked_again(tiny_pair_lm_path, tmp_path):
    """A shard written before the rewards column (string chosen/rejected for message prompts) is not joined with
    new ones: the resumed output equals a fresh run's."""
    data = write_jsonl(tmp_path / "candidates.jsonl", candidate_rows(MESSAGE_PROMPTS))
    fresh, old = tmp_path / "fresh" / "ranked.jsonl", tmp_path / "old" / "ranked.jsonl"
    rank_job(data, fresh, tiny_pair_lm_path)
    rank_job(data, old, tiny_pair_lm_path)
    shard = Path(str(old) + ".shards") / "shard-00000.jsonl"
    rows = read_jsonl(shard)
    for row in rows:
        del row["rewards"]
        row["chosen"], row["rejected"] = row["responses"][row["best"]], row["responses"][row["worst"]]
    shard.write_text("".join(json.dumps(r) + "\n" for r in rows))
    old.unlink()
    rank_job(data, old, tiny_pair_lm_path)
    assert old.read_bytes() == fresh.read_bytes()


def test_iterate_keeps_system_turns_for_the_policy_and_checks_them_for_the_judge(tmp_path):
    from rlhf_pairs.configs import IterateConfig
    from rlhf_pairs.trainer.iterative_plan import load_prompts
    from rlhf_pairs.utils.distributed import process_state

    process_state()
    rendered = llama3([SYSTEM, {"role": "user", "content": "Name a tree."}])
    prompts = [MESSAGE_PROMPTS[0], rendered, "Count to three."]
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    notes = Counter()
    rounds, _ = load_prompts(IterateConfig(dataset_name=str(data), rounds=1), notes)
    assert rounds == [[MESSAGE_PROMPTS[0], [SYSTEM, {"role": "user", "content": "Name a tree."}], "Count to three."]]
    merged = sum(p[0]["role"] == "system" for p in (MESSAGE_PROMPTS[0], rounds[0][1]))
    assert (notes["rendered_chat_parsed"], notes["system_merged"]) == (1, merged)  # counted for the run's record
    with pytest.raises(ValueError, match=r"prompts.jsonl, line 1: `prompt` starts with a system message"):
        load_prompts(IterateConfig(dataset_name=str(data), rounds=1, system_message="error"))


# ---------------------------------------------------------------------------------------------------------------------
# 7. RLHFlow's older LMFlow files, and JSON lines under a .json name
# ---------------------------------------------------------------------------------------------------------------------


def test_lmflow_files_load_and_rank(tiny_pair_lm_path, tmp_path, caplog):
    """RLHFlow's generation before commit d49a5dbb wrote {"type": "text_only", "instances": [...]} with prompts
    rendered by the policy's chat template (Llama-3 here)."""
    conversations = [[{"role": "user", "content": p}] for p in STRING_PROMPTS]
    conversations[0] = [SYSTEM, *conversations[0]]
    rows = candidate_rows([llama3(c) for c in conversations])
    data = tmp_path / "gen_data0.json"
    data.write_text(json.dumps({"type": "text_only", "instances": rows}))
    assert load_rows(str(data)) == rows
    out = tmp_path / "ranked.jsonl"
    with caplog.at_level(logging.INFO):
        summary = rank_job(data, out, tiny_pair_lm_path)
    assert (summary["ranked"], summary["rendered_chat_parsed"], summary["system_merged"]) == (4, 4, 1)
    assert (
        "4 prompt(s) are strings already rendered with a chat template (Llama-3, ChatML or Gemma); read as"
        in caplog.text
    )
    ranked = read_jsonl(out)
    assert [r["prompt"] for r in ranked] == [r["prompt"] for r in rows]  # as given
    assert all(isinstance(r["chosen"], str) for r in ranked)  # a string prompt: string completions
    judge = PairPreferenceJudge.from_pretrained(str(tiny_pair_lm_path), device="cpu")
    expected = rank_candidates(judge, [judge_prompt(c) for c in conversations], [r["responses"] for r in rows])
    assert [(r["best"], r["worst"]) for r in ranked] == [(e.best, e.worst) for e in expected]


def test_json_lines_under_a_json_name_keep_their_line_numbers(tmp_path):
    """RLHFlow's gen_hf2.py writes JSON lines to <output_dir><index>.json."""
    rows = [{"prompt": "p", "responses": ["a", "b"]}, {"prompt": [{"role": "user", "content": "q"}], "responses": []}]
    data = tmp_path / "gen_data1.json"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    lines = []
    assert load_rows(str(data), line_numbers=lines) == rows and lines == [1, 2]  # mixed prompt types kept
    one = tmp_path / "one.json"
    one.write_text(json.dumps(rows[0]))
    assert load_rows(str(one)) == [rows[0]]
    array = tmp_path / "array.json"
    array.write_text(json.dumps([rows[0], rows[0]]))
    assert load_rows(str(array)) == [rows[0], rows[0]]  # a JSON array: datasets' reader, as before
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "text_only", "instances": [rows[0], ["no"]]}))
    with pytest.raises(ValueError, match=r"bad.json: instances\[1\] is a JSON list"):
        load_rows(str(bad))


# ---------------------------------------------------------------------------------------------------------------------
# 8. Chat strings already rendered with a template
# ---------------------------------------------------------------------------------------------------------------------


def test_rendered_chat_strings_parse_back_into_messages():
    conversation = [
        SYSTEM,
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye?"},
    ]
    assert parse_rendered_chat(llama3(conversation)) == (conversation, "llama-3")
    assert parse_rendered_chat(llama3(conversation, generation_prompt=False)) == (conversation, "llama-3")
    assert parse_rendered_chat(chatml(conversation)) == (conversation, "chatml")
    gemma = "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\nhello<end_of_turn>\n"
    gemma += "<start_of_turn>user\nbye?<end_of_turn>\n<start_of_turn>model\n"
    assert parse_rendered_chat(gemma) == (conversation[1:], "gemma")
    # Not a whole conversation ending with a user turn: left as text.
    assert parse_rendered_chat(llama3(conversation[:3], generation_prompt=False)) is None
    assert parse_rendered_chat("Explain what <|im_start|> means.") is None
    assert parse_rendered_chat("[INST] hi [/INST]") is None
    # A special-token string inside ordinary text is not a rendered chat.
    assert prepare_prompt("Name a color. <|eot_id|> (text)") == ("Name a color. <|eot_id|> (text)",) * 2 + ([],)
    assert prepare_prompt(chatml(conversation), "drop")[1:] == (
        conversation[1:],
        ["rendered_chat_parsed", "system_dropped"],
    )


def test_unrecognised_rendered_chats_are_judged_as_text_with_a_warning(tiny_pair_lm_path, tmp_path, caplog):
    prompts = ["<s>[INST] Name a tree. [/INST]", chatml([{"role": "user", "content": "Name a bird."}]), "Plain."]
    data = write_jsonl(tmp_path / "candidates.jsonl", candidate_rows(prompts))
    with caplog.at_level(logging.INFO):
        summary = rank_job(data, tmp_path / "ranked.jsonl", tiny_pair_lm_path)
    assert (summary["rendered_chat_unparsed"], summary["rendered_chat_parsed"], summary["ranked"]) == (1, 1, 3)
    assert "1 prompt(s) hold chat-template tokens" in caplog.text
    assert "Fix: give the conversation as a message list" in caplog.text


def test_iterate_runs_on_prompts_with_system_turns_and_rendered_chats(tiny_pair_lm_path, tmp_path):
    """Generation sees the system turn through the policy's chat template, ranking and the win rate through the
    judge's merged prompt; a rendered chat string is generated from as the conversation it holds."""
    from rlhf_pairs.scripts import iterate
    from rlhf_pairs.testing_utils import build_tiny_pair_lm

    root = Path(__file__).resolve().parents[1]
    policy = build_tiny_pair_lm(tmp_path / "policy", seed=1)
    prompts = [
        *MESSAGE_PROMPTS,
        llama3([SYSTEM, {"role": "user", "content": "Describe a fox."}]),
        [SYSTEM, {"role": "user", "content": "What is 42?"}],  # held out: the win rate judges it
    ]
    data = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    out = tmp_path / "run"
    argv = ["--config", root / "recipes" / "iterative_dpo" / "tiny_cpu.yaml", "--rounds", "1", "--prompts_per_round",
            "5", "--num_eval_prompts", "1", "--model_name_or_path", policy, "--judge", tiny_pair_lm_path,
            "--dataset_name", data, "--output_dir", out]  # fmt: skip
    metrics = run(iterate, list(map(str, argv)))
    assert metrics[0]["eval/win_rate"] is not None
    notes = json.loads((out / "iterate_config.json").read_text())["prompt_notes"]
    assert notes["rendered_chat_parsed"] == 1 and notes["system_merged"] >= 2  # the run records what it changed
    candidates = read_jsonl(out / "round_1" / "generate" / "candidates.jsonl")
    assert candidates[0]["prompt"] == MESSAGE_PROMPTS[0]  # the system turn is kept for the policy
    assert candidates[4]["prompt"] == [SYSTEM, {"role": "user", "content": "Describe a fox."}]
    pairs = read_jsonl(out / "round_1" / "pairs" / "pairs.jsonl")
    assert pairs[0]["prompt"][0] == SYSTEM  # and trained with it
    completions = read_jsonl(out / "round_1" / "eval" / "completions.jsonl")
    assert completions[0]["prompt"] == prompts[-1]
