"""PairwiseWinRateCallback inside an OnlineDPO run: the logged win rate equals a recomputation from scratch."""

import copy

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_pairs.judges.loading import load_judge
from rlhf_pairs.rewards import PairwiseRewardFunction
from rlhf_pairs.trainer.callbacks import PairwiseWinRateCallback
from rlhf_pairs.win_rate import win_rate

PROMPTS = [
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the sea."}],
    [{"role": "user", "content": "hello!"}],
]
MAX_NEW_TOKENS = 6


def greedy_completions(model, tokenizer, prompts) -> list[str]:
    """One prompt at a time (no padding): the reference computation the callback's batched, sharded one must match."""
    out = []
    for prompt in prompts:
        text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            generated = model.generate(
                **ids, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        out.append(tokenizer.decode(generated[0, ids["input_ids"].shape[1] :], skip_special_tokens=True))
    return out


def test_win_rate_callback_logs_the_recomputed_win_rate(tiny_pair_lm_path, tmp_path):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    judge = load_judge("pair_lm", str(tiny_pair_lm_path))
    policy = AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path)
    initial = copy.deepcopy(policy).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_pair_lm_path)
    args = OnlineDPOConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=2,
        per_device_eval_batch_size=2,  # the callback left-pads batches of 2
        max_new_tokens=6,
        max_length=128,
        learning_rate=5e-2,
        bf16=False,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=0,
    )
    train = datasets.Dataset.from_list([{"prompt": p} for p in PROMPTS + PROMPTS[1:]])
    trainer = OnlineDPOTrainer(
        model=policy,
        reward_funcs=[PairwiseRewardFunction(judge, layout="pairs")],
        args=args,
        train_dataset=train,
        processing_class=tokenizer,
    )
    callback = PairwiseWinRateCallback(judge, trainer, prompts=PROMPTS, max_new_tokens=MAX_NEW_TOKENS, freq=2)
    trainer.add_callback(callback)
    trainer.train()

    logged = [h for h in trainer.state.log_history if "eval_win_rate" in h]
    assert [h["step"] for h in logged] == [2]
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2]  # the step's own log survives
    assert 0.0 <= logged[0]["eval_win_rate"] <= 1.0

    references = greedy_completions(initial, tokenizer, PROMPTS)
    assert callback.references == references  # generated from the initial policy at train begin
    completions = greedy_completions(policy.eval(), tokenizer, PROMPTS)
    assert callback.completions == completions
    assert completions != references  # training moved the policy, so the comparison is not trivial

    # A resumed run starts from a trained policy: it must read the initial policy's references back, not regenerate.
    saved = tmp_path / "eval_win_rate_references.json"
    assert saved.exists()
    resumed = PairwiseWinRateCallback(judge, trainer, prompts=PROMPTS, max_new_tokens=MAX_NEW_TOKENS, freq=2)
    resumed.on_train_begin(args, trainer.state, trainer.control)
    assert resumed.references == references
    other = PairwiseWinRateCallback(judge, trainer, prompts=PROMPTS[:2], max_new_tokens=MAX_NEW_TOKENS, freq=2)
    other.on_train_begin(args, trainer.state, trainer.control)  # other prompts: the saved file does not apply
    assert other.references == completions[:2]
    judge.clear_cache()
    judge_prompts = [p[1:] if p[0]["role"] == "system" else p for p in PROMPTS]
    judge_prompts[0] = [{"role": "user", "content": "Be brief.\n\nWhat is the capital of France?"}]
    expected = win_rate(judge, judge_prompts, completions, references)
    assert logged[0]["eval_win_rate"] == pytest.approx(expected.win_rate)
    assert logged[0]["eval_win_probability"] == pytest.approx(expected.mean_probability, abs=1e-6)


def test_win_rate_callback_needs_prompts_and_matching_references(tiny_pair_lm_path, tmp_path):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    judge = load_judge("pair_lm", str(tiny_pair_lm_path))
    args = OnlineDPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to=[], max_steps=1)
    trainer = OnlineDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path),
        reward_funcs=[PairwiseRewardFunction(judge)],
        args=args,
        train_dataset=datasets.Dataset.from_list([{"prompt": "hi"}]),
        processing_class=AutoTokenizer.from_pretrained(tiny_pair_lm_path),
    )
    with pytest.raises(ValueError, match="eval_dataset"):
        PairwiseWinRateCallback(judge, trainer)
    with pytest.raises(ValueError, match="2 references for 3 prompts"):
        PairwiseWinRateCallback(judge, trainer, prompts=["a", "b", "c"], references=["x", "y"])
    # The judge reads the prompts by the rule every job uses: a system turn merged, a rendered chat parsed back.
    rendered = "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
    system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    callback = PairwiseWinRateCallback(judge, trainer, prompts=[rendered, system])
    assert callback.judge_prompts == [
        [{"role": "user", "content": "Hi there"}],
        [{"role": "user", "content": "Be brief.\n\nHello"}],
    ]
    with pytest.raises(ValueError, match=r"prompts\[1\]: .*system"):
        PairwiseWinRateCallback(judge, trainer, prompts=[rendered, system], system_message="error")


class LongerIsBetterTRLJudge:
    """Written against TRL's former BasePairwiseJudge: only ``judge(prompts, completions, shuffle_order=True)``."""

    def judge(self, prompts, completions, shuffle_order=True):
        return [0 if len(a) > len(b) else 1 for a, b in completions]


def test_win_rate_callback_takes_a_trl_style_judge(tiny_pair_lm_path, tmp_path):
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from rlhf_pairs import TRLJudgeAdapter

    args = OnlineDPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to=[], max_steps=1)
    trainer = OnlineDPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_pair_lm_path),
        reward_funcs=[PairwiseRewardFunction(LongerIsBetterTRLJudge())],
        args=args,
        train_dataset=datasets.Dataset.from_list([{"prompt": "hi"}]),
        processing_class=AutoTokenizer.from_pretrained(tiny_pair_lm_path),
    )
    callback = PairwiseWinRateCallback(
        LongerIsBetterTRLJudge(), trainer, prompts=PROMPTS, references=["a longer reference", "b", "c"]
    )
    assert isinstance(callback.judge, TRLJudgeAdapter)
    callback.generate = lambda: ["short", "longer answer", "same"]  # the policy's completions, without generating
    result = callback.evaluate(step=1)
    assert result.win_rate == pytest.approx(2 / 3)
    assert trainer.state.log_history[-1]["eval_win_rate"] == pytest.approx(2 / 3)
