"""OnlineDPO and GRPO trained through PairwiseRewardFunction with tiny pair judges, the online_dpo/grpo scripts
under a 2-process CPU launch, and every online_dpo/grpo recipe and accelerate config parsed."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
import yaml
from conftest import free_port
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_pairs.judges.loading import load_judge
from rlhf_pairs.rewards import PairwiseRewardFunction
from rlhf_pairs.win_rate import win_rate

ROOT = Path(__file__).resolve().parents[1]
SYSTEM = "Answer in one sentence."
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "hello!", "What is 12 times 12?"]


def conversations():
    """Conversational prompts, half of them with a system message (merged into the user turn for the judge)."""
    rows = []
    for i, q in enumerate(QUESTIONS):
        system = [{"role": "system", "content": SYSTEM}] if i % 2 == 0 else []
        rows.append({"prompt": [*system, {"role": "user", "content": q}]})
    return rows


def as_judge_prompt(prompt):
    """Independent of rlhf_pairs.rewards: what the judge must see for a TRL prompt."""
    if prompt[0]["role"] == "system":
        return [{"role": "user", "content": prompt[0]["content"] + "\n\n" + prompt[1]["content"]}]
    return prompt


class RecordingReward(PairwiseRewardFunction):
    """Records what TRL passed and what the reward returned."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []

    def __call__(self, prompts, completions, **kwargs):
        rewards = super().__call__(prompts, completions, **kwargs)
        self.calls.append((prompts, [c[0]["content"] for c in completions], rewards))
        return rewards


def direct(judge, prompt, a, b) -> float:
    return judge.compare([as_judge_prompt(prompt)], [a], [b])[0]


def expected_judge_metrics(judge, prompt_groups, clear=0.75) -> dict:
    """What the reward logs for one call, recomputed with direct judge calls: mean |P - 0.5| over the distinct pairs
    of different texts, and the share of groups whose unique best text beats every other with P >= clear."""
    deltas, winners = {}, 0
    for prompt, texts, rewards in prompt_groups:
        for i, a in enumerate(texts):
            for b in texts[i + 1 :]:
                if a != b:
                    deltas[(json.dumps(prompt), *sorted((a, b)))] = abs(direct(judge, prompt, a, b) - 0.5)
        best = texts[max(range(len(texts)), key=lambda i: (rewards[i], -i))]
        others = set(texts) - {best}
        winners += (
            texts.count(best) == 1 and bool(others) and all(direct(judge, prompt, best, o) >= clear for o in others)
        )
    return {
        "rewards/pairwise_judge/decisiveness": sum(deltas.values()) / len(deltas) if deltas else 0.0,
        "rewards/pairwise_judge/clear_winner_rate": winners / len(prompt_groups),
    }


def train_and_check(trainer, policy):
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    changed = [name for name, p in policy.named_parameters() if not torch.equal(before[name], p.detach())]
    assert changed, "no parameter changed"


def test_online_dpo_rewards_are_judge_probabilities_of_each_pair(tiny_pair_lm_path, tmp_path):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    judge = load_judge("pair_lm", str(tiny_pair_lm_path))
    policy = AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path)
    reward = RecordingReward(judge)  # layout="auto": OnlineDPO's 2 * prompts
    args = OnlineDPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        max_new_tokens=8,
        max_length=128,
        learning_rate=1e-2,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    trainer = OnlineDPOTrainer(
        model=policy,
        reward_funcs=[reward],
        args=args,
        train_dataset=datasets.Dataset.from_list(conversations()),
        processing_class=AutoTokenizer.from_pretrained(tiny_pair_lm_path),
    )
    reward.log_metrics_to(trainer)  # OnlineDPO passes no log_metric: the judge's metrics go to trainer.stats
    train_and_check(trainer, policy)

    assert len(reward.calls) == 2
    judge.clear_cache()
    for prompts, texts, rewards in reward.calls:
        n = len(prompts) // 2
        assert prompts[:n] == prompts[n:] and len(texts) == len(rewards) == 2 * n
        for i in range(n):
            p = direct(judge, prompts[i], texts[i], texts[i + n])
            assert rewards[i] == pytest.approx(p, abs=1e-4)
            assert rewards[i + n] == pytest.approx(1 - p, abs=1e-4)
        assert any(abs(r - 0.5) > 1e-3 for r in rewards)  # the judge is not indifferent: the check has teeth
    # The mean reward is 0.5 by construction; decisiveness and clear winners are logged with each step's loss.
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert all(h["objective/scores"] == pytest.approx(0.5, abs=1e-6) for h in logged)
    for h, (prompts, texts, rewards) in zip(logged, reward.calls, strict=True):
        n = len(prompts) // 2
        pairs = [
            (as_judge_prompt(prompts[i]), [texts[i], texts[i + n]], [rewards[i], rewards[i + n]]) for i in range(n)
        ]
        expected = expected_judge_metrics(judge, pairs)
        assert {k: h[k] for k in expected} == pytest.approx(expected, abs=1e-4)
    assert any(h["rewards/pairwise_judge/decisiveness"] > 1e-3 for h in logged)


def test_grpo_rewards_are_round_robin_scores_within_each_group(tiny_pairrm_path, tiny_pair_lm_path, tmp_path):
    from trl import GRPOConfig, GRPOTrainer

    judge = load_judge("pairrm", str(tiny_pairrm_path))
    policy = AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path)
    reward = RecordingReward(judge, layout="groups")
    args = GRPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=6,
        num_generations=3,
        max_completion_length=8,
        learning_rate=1e-2,
        beta=0.0,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    trainer = GRPOTrainer(
        model=policy,
        reward_funcs=[reward],
        args=args,
        train_dataset=datasets.Dataset.from_list(conversations()),
        processing_class=AutoTokenizer.from_pretrained(tiny_pair_lm_path),
    )
    train_and_check(trainer, policy)

    assert len(reward.calls) == 2
    judge.clear_cache()
    for prompts, texts, rewards in reward.calls:
        assert len(prompts) == 6
        for start in (0, 3):
            group = range(start, start + 3)
            assert all(prompts[i] == prompts[start] for i in group)
            for i in group:
                expected = sum(direct(judge, prompts[i], texts[i], texts[j]) for j in group if j != i) / 2
                assert rewards[i] == pytest.approx(expected, abs=1e-4)
    logged = [h["rewards/pairwise_judge/mean"] for h in trainer.state.log_history if "reward" in h]
    assert logged == pytest.approx([sum(r) / len(r) for _, _, r in reward.calls], abs=1e-6)
    # Flat by construction; what the judge decided comes through GRPO's log_metric.
    assert logged == pytest.approx([0.5, 0.5], abs=1e-6)
    history = [h for h in trainer.state.log_history if "reward" in h]
    for h, (prompts, texts, rewards) in zip(history, reward.calls, strict=True):
        groups = [(as_judge_prompt(prompts[s]), texts[s : s + 3], rewards[s : s + 3]) for s in (0, 3)]
        expected = expected_judge_metrics(judge, groups)
        assert {k: h[k] for k in expected} == pytest.approx(expected, abs=1e-4)
    assert any(h["rewards/pairwise_judge/decisiveness"] > 1e-3 for h in history)


def test_grpo_job_ranks_two_groups_of_one_prompt_separately(tiny_pair_lm_path, tmp_path):
    """A prompt sampled twice in a row (duplicates in the dataset) gives two adjacent groups with equal prompts;
    the job's reward must rank each group of num_generations alone, not the run of four as one group."""
    from rlhf_pairs.scripts import grpo, run

    prompts = tmp_path / "duplicates.jsonl"
    prompts.write_text((json.dumps({"prompt": "What is 12 times 12?"}) + "\n") * 4)
    trainer = run(grpo, [
        "--config", str(ROOT / "recipes/grpo/tiny_cpu.yaml"), "--model_name_or_path", str(tiny_pair_lm_path),
        "--judge", str(tiny_pair_lm_path), "--dataset_name", str(prompts), "--output_dir", str(tmp_path / "out"),
        "--win_rate_prompts", "0", "--max_steps", "1", "--per_device_train_batch_size", "4",
    ])  # fmt: skip
    assert trainer.num_generations == 2
    (reward,) = trainer.reward_funcs
    assert reward.num_generations == 2
    judge = load_judge("pair_lm", str(tiny_pair_lm_path))
    prompt = [{"role": "user", "content": "What is 12 times 12?"}]
    texts = ["144.", "It is 144, since 12 * 12 = 144.", "twelve", "I do not know."]
    rewards = reward([prompt] * 4, [[{"role": "assistant", "content": t}] for t in texts], log_metric=None)
    for first in (0, 2):  # round robin within a pair: P(this beats the other one)
        p = direct(judge, prompt, texts[first], texts[first + 1])
        assert rewards[first] == pytest.approx(p, abs=1e-4)
        assert rewards[first + 1] == pytest.approx(1 - p, abs=1e-4)
    one_group = sum(direct(judge, prompt, texts[0], texts[j]) for j in (1, 2, 3)) / 3
    assert abs(rewards[0] - one_group) > 1e-4  # the check has teeth: a group of four scores differently


def launch(script: str, config: str, policy: Path, judge: Path, out: Path, *extra: str) -> list[dict]:
    """Run a script under `accelerate launch` with the 2-process CPU config; returns its log history."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--main_process_port", str(free_port()), "--config_file"]
    cmd += [str(ROOT / "recipes/accelerate/cpu_2proc.yaml"), str(ROOT / "scripts" / script)]
    cmd += ["--config", str(ROOT / config), "--model_name_or_path", str(policy), "--judge", str(judge)]
    cmd += ["--dataset_name", str(ROOT / "rlhf_pairs/data/demo_pairs.jsonl"), "--output_dir", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRL_EXPERIMENTAL_SILENCE": "1"}
    subprocess.run(cmd, check=True, env=env, cwd=out.parent, timeout=300)
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def test_online_dpo_script_two_processes(tiny_pair_lm_path, tmp_path):
    out = tmp_path / "online_dpo"
    history = launch("online_dpo.py", "recipes/online_dpo/tiny_cpu.yaml", tiny_pair_lm_path, tiny_pair_lm_path, out)
    train = [h for h in history if "loss" in h]
    assert [h["step"] for h in train] == [1, 2] and all(math.isfinite(h["loss"]) for h in train)
    # 8 train prompts (4 of the 12 held out for the win rate), 2 per process: 2 processes finish an epoch in 2 steps.
    assert train[-1]["epoch"] == 1.0
    (logged,) = [h for h in history if "eval_win_rate" in h]
    assert 0.0 <= logged["eval_win_rate"] <= 1.0
    # The job connects the reward's metrics to OnlineDPO's stats (gathered over both processes).
    assert all(0.0 <= h["rewards/pairwise_judge/decisiveness"] <= 0.5 for h in train)
    assert all(0.0 <= h["rewards/pairwise_judge/clear_winner_rate"] <= 1.0 for h in train)

    # The win rate of the saved policy's greedy completions vs. the initial policy's, on the 4 held-out prompts.
    prompts = [json.loads(line)["prompt"] for line in (ROOT / "rlhf_pairs/data/demo_pairs.jsonl").open()][-4:]
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair_lm_path)

    def greedy(path):
        model = AutoModelForCausalLM.from_pretrained(path).eval()
        texts = []
        for prompt in prompts:
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
            with torch.no_grad():
                output = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            texts.append(tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
        return texts

    judge = load_judge("pair_lm", str(tiny_pair_lm_path))
    expected = win_rate(judge, prompts, greedy(out), greedy(tiny_pair_lm_path))
    assert logged["eval_win_rate"] == pytest.approx(expected.win_rate)
    assert logged["eval_win_probability"] == pytest.approx(expected.mean_probability, abs=1e-5)


def test_grpo_script_two_processes_with_groups_split_across_them(tiny_pair_lm_path, tmp_path):
    # 3 completions per process, groups of 2: every step's middle group is split across the two processes.
    out = tmp_path / "grpo"
    extra = ("--per_device_train_batch_size", "3")
    history = launch("grpo.py", "recipes/grpo/tiny_cpu.yaml", tiny_pair_lm_path, tiny_pair_lm_path, out, *extra)
    train = [h for h in history if "loss" in h]
    assert [h["step"] for h in train] == [1, 2] and all(math.isfinite(h["loss"]) for h in train)
    # Round robin scores of a whole group average exactly 0.5; the std shows the judge separated completions.
    assert all(h["rewards/pairwise_judge/mean"] == pytest.approx(0.5, abs=1e-6) for h in train)
    assert all(h["rewards/pairwise_judge/std"] > 0 for h in train)
    assert all(0.0 < h["rewards/pairwise_judge/decisiveness"] <= 0.5 for h in train)


RECIPES = sorted((ROOT / "recipes").glob("online_dpo/*.yaml")) + sorted((ROOT / "recipes").glob("grpo/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_parses_with_its_script_parser(recipe):
    import importlib

    module = importlib.import_module(f"rlhf_pairs.scripts.{recipe.parent.name}")
    # --use_cpu: the GPU recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU.
    script_args, judge_args, training_args, model_args = module.make_parser().parse_args_and_config(
        ["--config", str(recipe), "--use_cpu", "true"]
    )
    assert judge_args.judge and script_args.dataset_name and model_args.model_name_or_path
    assert training_args.output_dir


@pytest.mark.parametrize("config", sorted((ROOT / "recipes/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_config_loads(config):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType

    raw = yaml.safe_load(config.read_text())
    assert raw["distributed_type"] in {t.value for t in DistributedType}
    assert isinstance(raw["num_processes"], int) and raw["num_processes"] >= 1
    loaded = load_config_from_file(str(config))
    assert loaded.distributed_type == DistributedType(raw["distributed_type"])
    if raw["distributed_type"] == "DEEPSPEED":
        assert raw["deepspeed_config"]["zero_stage"] in (2, 3)


def test_online_dpo_job_trains_a_lora_adapter(tiny_pair_lm_path, tmp_path):
    """use_peft: only the adapter trains (the base weights stay as loaded) and the loss is finite."""
    from peft import PeftModel
    from safetensors.torch import load_file

    from rlhf_pairs.scripts import online_dpo, run

    trainer = run(online_dpo, [
        "--config", str(ROOT / "recipes/online_dpo/tiny_cpu.yaml"), "--model_name_or_path", str(tiny_pair_lm_path),
        "--judge", str(tiny_pair_lm_path), "--dataset_name", str(ROOT / "rlhf_pairs/data/demo_pairs.jsonl"),
        "--output_dir", str(tmp_path / "out"), "--win_rate_prompts", "0", "--max_steps", "2",
        "--use_peft", "true", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
    ])  # fmt: skip
    model = trainer.model
    assert isinstance(model, PeftModel)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    base = load_file(str(tiny_pair_lm_path / "model.safetensors"))
    adapters = {n: p for n, p in model.named_parameters() if "lora_B" in n}
    assert adapters and any(p.abs().sum().item() > 0 for p in adapters.values())  # lora_B starts at 0: it moved
    q_proj = model.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(q_proj.detach().cpu(), base["model.layers.0.self_attn.q_proj.weight"])
