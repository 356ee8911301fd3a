"""Win rate of the policy against reference completions, judged pairwise, logged during training."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from transformers import GenerationConfig, Trainer, TrainerCallback

from rlhf_pairs.data_utils import Prompt, prepare_prompts
from rlhf_pairs.judges.trl_adapter import as_judge
from rlhf_pairs.ranking import SupportsCompare
from rlhf_pairs.utils.io import write_json_atomic
from rlhf_pairs.win_rate import WinRate, win_rate

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerControl, TrainerState, TrainingArguments


class PairwiseWinRateCallback(TrainerCallback):
    """Every ``freq`` steps (and whenever the trainer evaluates), generate a completion for each of a fixed set of
    prompts with the current policy, judge it against a reference completion with :func:`rlhf_pairs.win_rate`,
    and log ``{prefix}_win_rate`` and ``{prefix}_win_probability`` (mean P(policy beats reference)) through the
    trainer's loggers (``report_to``, ``state.log_history``).

    Usage::

        trainer = OnlineDPOTrainer(...)  # or GRPOTrainer, RLOOTrainer, any transformers Trainer
        trainer.add_callback(PairwiseWinRateCallback(judge, trainer, prompts=eval_prompts, freq=50))

    Args:
        judge: anything with ``compare(prompts, responses_a, responses_b) -> list[float]``, or a judge written for
            TRL's former API (only ``judge(prompts, completions, shuffle_order=True)``), wrapped in a
            :class:`~rlhf_pairs.TRLJudgeAdapter`.
        trainer: the trainer it is attached to (for the model, tokenizer, accelerator and ``log``).
        prompts: strings or chat message lists; default: the ``prompt`` column of ``trainer.eval_dataset``.
        references: one reference completion per prompt. Default: the greedy completions of the *initial* policy,
            generated at the start of training, so the win rate measures progress over the starting point. They are
            saved to ``{output_dir}/{prefix}_win_rate_references.json`` and read back when training resumes (from a
            checkpoint the policy is no longer the initial one), as long as the prompts and generation settings
            are the same.
        num_prompts: use only the first ``num_prompts`` prompts (and references).
        generation_config: how completions are generated; default greedy decoding (``do_sample=False``) with
            ``max_new_tokens``, so the win rate is a deterministic function of the policy.
        max_new_tokens: for the default generation config; default the trainer's ``max_new_tokens`` or
            ``max_completion_length``, else 64.
        batch_size: prompts per ``generate`` call on each process; default ``per_device_eval_batch_size``.
        freq: steps between evaluations; default the trainer's ``eval_steps`` (``state.eval_steps``). OnlineDPO's
            evaluation loop cannot run (it feeds raw prompts to the model), so with it set ``freq`` and keep
            ``eval_strategy="no"``. Also runs at ``on_evaluate``, at most once per global step.
        system_message: how leading system messages reach the judge (see :func:`rlhf_pairs.data_utils.prepare_prompt`);
            generation always sees the full conversation.
        prefix: metric name prefix.

    Multi-process: the prompts are split over the processes (``accelerator.split_between_processes``), each
    generates its share, the completions are gathered in prompt order, the main process judges them all in one
    ``compare`` call and the result is broadcast, so every process logs the same numbers. Prompts are rendered with
    the tokenizer's chat template (message lists) and tokenized without special tokens, left-padded, as TRL's
    trainers do. Logging goes through ``transformers.Trainer.log`` itself (GRPO's override would flush and clear
    its accumulated training metrics into this record), keeping the trainer's control flags, so the step's own
    training log still happens.

    Raises:
        ValueError: no prompts (none given and no ``eval_dataset``), or references of another length.
    """

    def __init__(
        self,
        judge: SupportsCompare,
        trainer: Trainer,
        prompts: Sequence[Prompt] | None = None,
        references: Sequence[str] | None = None,
        num_prompts: int | None = None,
        generation_config: GenerationConfig | None = None,
        max_new_tokens: int | None = None,
        batch_size: int | None = None,
        freq: int | None = None,
        system_message: str = "merge",
        prefix: str = "eval",
    ) -> None:
        if prompts is None:
            if trainer.eval_dataset is None or "prompt" not in trainer.eval_dataset.column_names:
                raise ValueError("pass `prompts`, or give the trainer an `eval_dataset` with a 'prompt' column")
            prompts = trainer.eval_dataset["prompt"]
        prompts = list(prompts)[:num_prompts]
        if not prompts:
            raise ValueError("`prompts` is empty: the win rate needs at least one prompt")
        if references is not None:
            references = list(references)[:num_prompts]
            if len(references) != len(prompts):
                raise ValueError(f"got {len(references)} references for {len(prompts)} prompts; pass one per prompt")
        self.judge = as_judge(judge)
        self.trainer = trainer
        self.prompts = prompts
        # The one prompt rule of every job (system turns, chat strings rendered with a template parsed back).
        _, self.judge_prompts, _ = prepare_prompts(prompts, lambda i: f"prompts[{i}]", system_message)
        self.references = references
        self.batch_size = batch_size or trainer.args.per_device_eval_batch_size
        self.freq = freq
        self.prefix = prefix
        self.last_result: WinRate | None = None
        self.completions: list[str] | None = None  # of the last evaluation
        self._last_step = -1
        if generation_config is None:
            tokenizer = self._tokenizer
            max_new_tokens = (
                max_new_tokens
                or getattr(trainer.args, "max_new_tokens", None)
                or getattr(trainer.args, "max_completion_length", None)
                or 64
            )
            generation_config = GenerationConfig(
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        self.generation_config = generation_config

    @property
    def _tokenizer(self) -> PreTrainedTokenizerBase:
        processing_class = self.trainer.processing_class
        return getattr(processing_class, "tokenizer", processing_class)

    @property
    def references_path(self) -> Path:
        return Path(self.trainer.args.output_dir) / f"{self.prefix}_win_rate_references.json"

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.references is not None:
            return
        key = {"prompts": self.prompts, "generation_config": self.generation_config.to_json_string(use_diff=True)}
        if self.references_path.exists():
            saved = json.loads(self.references_path.read_text())
            if {k: saved.get(k) for k in key} == key and len(saved.get("references", [])) == len(self.prompts):
                self.references = saved["references"]
                return
        self.references = self.generate()
        if self.trainer.accelerator.is_main_process:
            write_json_atomic(self.references_path, {**key, "references": self.references})

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        freq = self.freq or state.eval_steps
        if freq and state.global_step % int(freq) == 0:
            self.evaluate(state.global_step)

    def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self.evaluate(state.global_step)

    def evaluate(self, step: int) -> WinRate:
        """Generate, judge against the references and log; once per global step (a repeat returns the last)."""
        if step == self._last_step and self.last_result is not None:
            return self.last_result
        if self.references is None:
            raise RuntimeError("no references yet: they are generated at the start of training, or pass them")
        completions = self.generate()
        accelerator = self.trainer.accelerator
        result: list[Any] = [None]  # the main process's WinRate, broadcast to the others
        if accelerator.is_main_process:
            result = [win_rate(self.judge, self.judge_prompts, completions, self.references)]
        if accelerator.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            result = broadcast_object_list(result, from_process=0)
        self.completions, self.last_result, self._last_step = completions, result[0], step
        metrics = {
            f"{self.prefix}_win_rate": result[0].win_rate,
            f"{self.prefix}_win_probability": result[0].mean_probability,
        }
        # Trainer.log resets control.should_log (set for this step's training log when called from on_step_end).
        flags = dataclasses.asdict(self.trainer.control)
        Trainer.log(self.trainer, metrics)
        for name, value in flags.items():
            setattr(self.trainer.control, name, value)
        return result[0]

    @torch.no_grad()
    def generate(self) -> list[str]:
        """The current policy's completions for all prompts (in order, on every process), sharded over processes."""
        from accelerate.utils import gather_object
        from trl.data_utils import maybe_apply_chat_template
        from trl.models.utils import unwrap_model_for_generation

        trainer, tokenizer = self.trainer, self._tokenizer
        accelerator = trainer.accelerator
        model = trainer.model_wrapped if trainer.model_wrapped is not None else trainer.model
        with accelerator.split_between_processes(self.prompts) as shard:
            texts = [maybe_apply_chat_template({"prompt": p}, tokenizer)["prompt"] for p in shard]
            completions: list[str] = []
            with unwrap_model_for_generation(model, accelerator) as unwrapped:
                was_training = unwrapped.training
                unwrapped.eval()  # no dropout while generating
                try:
                    for start in range(0, len(texts), self.batch_size):
                        batch = tokenizer(
                            texts[start : start + self.batch_size],
                            return_tensors="pt",
                            padding=True,
                            padding_side="left",
                            add_special_tokens=False,
                        ).to(accelerator.device)
                        output = unwrapped.generate(**batch, generation_config=self.generation_config)
                        completions += tokenizer.batch_decode(
                            output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True
                        )
                finally:
                    unwrapped.train(was_training)
        return gather_object(completions) if accelerator.num_processes > 1 else completions
