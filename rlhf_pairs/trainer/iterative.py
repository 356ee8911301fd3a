"""The ``iterate`` job: iterative DPO (or rejection sampling) with a pairwise judge, resumable, on accelerate.

Round k (1-based) runs five stages, each written atomically to ``<output_dir>/round_k/<stage>/`` with a ``DONE``
marker and a ``stage.json`` holding the fingerprint of the configuration that produced it (see
:mod:`rlhf_pairs.trainer.stages`):

1. ``generate``: ``num_candidates`` samples per prompt of the round's prompt slice from the round's policy
   (round 1: ``model_name_or_path``; round k: round k-1's trained model), HF ``generate`` sharded over processes
   (or vLLM on the main process). Candidates depend only on (prompts, policy, settings, seed): chunks of
   ``shard_size`` prompts are sampled with a seed derived from (seed, round, chunk), whichever process runs them.
2. ``rank``: the rank job (:mod:`rlhf_pairs.rank_dataset`) with the pair judge, knockout by default, plus one extra
   match where best and worst did not meet, so every prompt has P(best beats worst) (its ``margin``).
3. ``pairs``: DPO pairs (``max_min`` or ``max_random``) or, with ``mode: rejection_sampling``, SFT rows of the best
   candidates; ``min_margin`` drops prompts whose best beats their worst with a lower probability. Dropped rows are
   counted by reason (:mod:`rlhf_pairs.pairs`).
4. ``train``: TRL's ``DPOTrainer`` (reference = the initial policy, or the round's starting policy with
   ``reference: previous``, passed explicitly) or ``SFTTrainer``; LoRA through TRL's ``ModelConfig``
   (``use_peft``), merged into the saved model so the next round starts from a plain checkpoint. With LoRA the
   reference is the policy with its adapter disabled only when it is the round's starting policy (round 1, or
   ``reference: previous``); from round 2 on, ``reference: initial`` loads the initial policy as a separate model.
   Trainer checkpoints go to ``train.partial/`` and a killed training resumes from the last complete one; the
   recorded ``train_loss`` comes from the (restored) log history, so it is the same with or without a resume.
5. ``eval`` (when there are held-out prompts): greedy completions of the new and the previous policy, judged
   pairwise; ``win_rate`` of the new policy.

After every stage the main process rewrites ``metrics.jsonl`` (one row per round: pairs kept, judge margin, DPO
losses, win rate, ...) and ``metrics.png`` from the finished stages' records, so they never hold duplicates.

**Resume**: re-running the same command skips every finished stage whose fingerprint matches, and continues the
first unfinished one from its partial work (finished shards, the last trainer checkpoint). A finished stage whose
fingerprint differs from the current config raises :class:`~rlhf_pairs.trainer.stages.StageConfigChanged`; ``--redo``
discards it and every later stage instead.

**Assumptions**: all processes see ``output_dir`` (one machine, or a shared file system); the policy has a chat
template; prompts pass :func:`~rlhf_pairs.data_utils.validate_prompt` (a string or user/assistant turns ending
with a user turn). Candidates are bit-identical for 1 or K processes on the same device type and dtype; training
results depend on the number of processes like any data-parallel training.

**Raises**: ``ValueError`` for a bad config or dataset (named), :class:`~rlhf_pairs.trainer.stages.StageConfigChanged`
for a changed finished stage, ``RuntimeError`` when a round keeps no pairs to train on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import time
from pathlib import Path

from rlhf_pairs.configs import IterateConfig, JudgeArguments, RankConfig
from rlhf_pairs.data_utils import load_rows, validate_prompt
from rlhf_pairs.generation import GenerationSettings, generate_candidates
from rlhf_pairs.pairs import build_dpo_pairs, build_sft_rows
from rlhf_pairs.trainer.stages import Stage, StageConfigChanged
from rlhf_pairs.utils.faults import kill_point, scope
from rlhf_pairs.utils.hashing import derived_seed, sha256_json
from rlhf_pairs.utils.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from rlhf_pairs.utils.plotting import plot_metrics

logger = logging.getLogger(__name__)

# TrainingArguments fields that change how a run is logged or saved, not what it trains.
_NOT_RESULT_FIELDS = {
    "output_dir",
    "logging_dir",
    "run_name",
    "report_to",
    "disable_tqdm",
    "push_to_hub",
    "hub_model_id",
    "hub_token",
    "hub_strategy",
    "hub_private_repo",
    "save_steps",
    "save_strategy",
    "save_total_limit",
    "save_only_model",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "dataloader_num_workers",
    "local_rank",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
}
_NOT_RESULT_PREFIXES = ("logging_", "hub_", "push_to_hub", "save_")


def _free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class IterativeLoop:
    """R rounds of generate -> rank -> pairs -> train -> eval, resumable stage by stage (see the module docs).

    Use: ``loop = IterativeLoop(config, judge_args, training_args, model_args); loop.setup(); metrics = loop.run();
    loop.cleanup()``. Every process of an ``accelerate launch`` runs the same calls.
    """

    def __init__(self, config: IterateConfig, judge_args: JudgeArguments, training_args, model_args):
        from trl import DPOConfig, SFTConfig

        if not model_args.model_name_or_path:
            raise ValueError("`model_name_or_path` (the initial policy) is required")
        expected = DPOConfig if config.mode == "dpo" else SFTConfig
        if not isinstance(training_args, expected):
            raise ValueError(
                f"`mode: {config.mode}` trains with TRL's {expected.__name__}, got {type(training_args).__name__}"
            )
        self.config = config
        self.judge_args = judge_args
        self.args = training_args
        self.model_args = model_args
        self.root = Path(training_args.output_dir)

    # ---- setup: prompts, plan, refusal of changed stages ----
    def setup(self) -> None:
        from rlhf_pairs.utils.distributed import process_state, process_timeout

        # Processes wait at barriers while rank 0 generates (vLLM) or on uneven shards: a long timeout, not the
        # 30 minutes of `ddp_timeout` the parsed TrainingArguments created the process group with.
        self.state = process_state(max(process_timeout(), self.args.ddp_timeout_delta))
        cfg = self.config
        if "{round}" in cfg.dataset_name:  # one prompt set per round, e.g. RLHFlow/iterative-prompt-v1-iter{round}-20K
            if cfg.num_eval_prompts and not cfg.eval_dataset_name:
                raise ValueError(
                    "with a per-round `dataset_name` template, give held-out prompts as `eval_dataset_name`"
                )
            sources = [cfg.dataset_name.format(round=k) for k in range(1, cfg.rounds + 1)]
            self.round_prompts = [
                self._prompts(load_rows(source, split=cfg.dataset_train_split), source)[: cfg.prompts_per_round or None]
                for source in sources
            ]
            prompts = []
        else:
            prompts = self._prompts(load_rows(cfg.dataset_name, split=cfg.dataset_train_split), cfg.dataset_name)
        if cfg.eval_dataset_name:
            eval_prompts = self._prompts(
                load_rows(cfg.eval_dataset_name, split=cfg.dataset_test_split), cfg.eval_dataset_name
            )
            self.eval_prompts = eval_prompts[: cfg.num_eval_prompts or None]
        elif prompts:
            if cfg.num_eval_prompts >= len(prompts):
                raise ValueError(
                    f"`num_eval_prompts`={cfg.num_eval_prompts} leaves no training prompt in {cfg.dataset_name}"
                )
            cut = len(prompts) - cfg.num_eval_prompts
            prompts, self.eval_prompts = prompts[:cut], prompts[cut:]
        else:
            self.eval_prompts = []
        if prompts:
            per_round = cfg.prompts_per_round
            if per_round is not None and per_round * cfg.rounds > len(prompts):
                raise ValueError(
                    f"{cfg.dataset_name} has {len(prompts)} training prompts; {cfg.rounds} rounds of `prompts_per_round`="
                    f"{per_round} need {per_round * cfg.rounds}"
                )
            self.round_prompts = [
                prompts if per_round is None else prompts[k * per_round : (k + 1) * per_round]
                for k in range(cfg.rounds)
            ]
        self.stages = self._plan()
        if self.state.is_main_process:
            logger.info(
                "iterate: %d round(s) of %s prompts, %d eval prompts, %d process(es), output %s",
                cfg.rounds, len(self.round_prompts[0]), len(self.eval_prompts), self.state.num_processes, self.root,
            )  # fmt: skip
            self._check_finished_stages()
            write_json_atomic(self.root / "iterate_config.json", self._config_record())
        self.state.wait_for_everyone()

    def _prompts(self, rows: list[dict], source: str) -> list:
        if not rows:
            raise ValueError(f"{source} has no rows")
        column = self.config.prompt_column
        if column not in rows[0]:
            raise ValueError(f"{source} has no {column!r} column (columns: {sorted(rows[0])})")
        prompts = [row[column] for row in rows]
        for i, prompt in enumerate(prompts):
            validate_prompt(prompt, f"{source}[{i}].{column}")
        return prompts

    def _config_record(self) -> dict:
        return {
            "iterate": dataclasses.asdict(self.config),
            "judge": dataclasses.asdict(self.judge_args),
            "training": self.args.to_dict(),
            "model": dataclasses.asdict(self.model_args),
        }

    def policy_path(self, k: int) -> str:
        """The policy round ``k`` starts from (and generates with)."""
        return self.model_args.model_name_or_path if k == 1 else str(self.root / f"round_{k - 1}" / "train")

    def _plan(self) -> list[Stage]:
        """Every stage of every round with its fingerprint; each fingerprint chains the stages it reads."""
        cfg, seed = self.config, self.args.seed
        model_keys = ("model_name_or_path", "model_revision", "dtype", "attn_implementation")
        model = {k: getattr(self.model_args, k) for k in model_keys}
        training = {
            k: v
            for k, v in self.args.to_dict().items()
            if k not in _NOT_RESULT_FIELDS and not k.startswith(_NOT_RESULT_PREFIXES)
        }
        peft = {k: v for k, v in dataclasses.asdict(self.model_args).items() if k.startswith(("lora_", "use_"))}
        judge = self.judge_args.result_fields()
        stages, previous_train = [], None
        for k in range(1, cfg.rounds + 1):
            policy = model if k == 1 else {"round": k - 1, "train": previous_train.digest}
            generate = Stage(self.root, k, "generate", {
                "policy": policy,
                "prompts_sha256": sha256_json(self.round_prompts[k - 1]),
                "seed": seed,
                **{f: getattr(cfg, f) for f in (
                    "num_candidates", "generation_temperature", "generation_top_p", "max_new_tokens",
                    "generation_batch_size", "generation_backend", "shard_size",
                )},
            })  # fmt: skip
            rank = Stage(self.root, k, "rank", {"generate": generate.digest, **judge, "method": cfg.ranking_method})
            pairs = Stage(self.root, k, "pairs", {
                "rank": rank.digest, "mode": cfg.mode, "pair_strategy": cfg.pair_strategy,
                "min_margin": cfg.min_margin, "seed": seed,
            })  # fmt: skip
            train = Stage(self.root, k, "train", {
                "pairs": pairs.digest, "policy": policy, "reference": cfg.reference, "initial": model,
                "training": training, "peft": peft,
            })  # fmt: skip
            stages += [generate, rank, pairs, train]
            if self.eval_prompts:
                stages.append(Stage(self.root, k, "eval", {
                    "train": train.digest, "previous": policy, "prompts_sha256": sha256_json(self.eval_prompts),
                    "max_new_tokens": cfg.eval_max_new_tokens or cfg.max_new_tokens,
                    "temperature": cfg.eval_temperature, "seed": seed, **judge,
                }))  # fmt: skip
            previous_train = train
        return stages

    def _check_finished_stages(self) -> None:
        for i, stage in enumerate(self.stages):
            try:
                if stage.check():
                    stage.discard_stale_partial()  # left by a kill between the commit and its clean-up
            except StageConfigChanged:
                if not self.config.redo:
                    raise
                later = self.stages[i:]
                logger.warning("redo: discarding %s", ", ".join(s.label for s in later if s.path.exists()))
                for s in later:
                    s.remove()
                return

    # ---- run ----
    def run(self) -> list[dict]:
        """Run every unfinished stage in order; returns the per-round metrics."""
        from rlhf_pairs.utils.distributed import zero3_init_disabled

        runners = {
            "generate": self._generate,
            "rank": self._rank,
            "pairs": self._pairs,
            "train": self._train,
            "eval": self._eval,
        }
        for stage in self.stages:
            if stage.check():
                if self.state.is_main_process:
                    logger.info("%s: finished earlier, reused", stage.label)
                continue
            start = time.perf_counter()
            if self.state.is_main_process:
                logger.info("%s: running", stage.label)
                stage.begin_partial()
            self.state.wait_for_everyone()
            # Only training is DeepSpeed's: the other stages load whole models for inference even under ZeRO-3.
            inference = contextlib.nullcontext() if stage.name == "train" else zero3_init_disabled()
            with scope(stage.label), inference:
                runners[stage.name](stage)
            _free_memory()
            self.state.wait_for_everyone()
            if self.state.is_main_process:
                logger.info("%s: done in %.1f s", stage.label, time.perf_counter() - start)
                self.write_metrics()
        metrics = self.collect_metrics()
        if self.state.is_main_process:
            self.write_metrics()
        return metrics

    def cleanup(self) -> None:
        _free_memory()

    # ---- stage 1: generate ----
    def _generate(self, stage: Stage) -> None:
        cfg = self.config
        prompts = self.round_prompts[stage.round_index - 1]
        settings = GenerationSettings(
            cfg.num_candidates, cfg.max_new_tokens, cfg.generation_temperature, cfg.generation_top_p,
            cfg.generation_batch_size,
        )  # fmt: skip
        shards, sanitized = self._generate_sharded(
            stage, "candidates", self.policy_path(stage.round_index), prompts, settings
        )
        if self.state.is_main_process:
            rows = [{"prompt": p, "responses": r} for p, r in zip(prompts, shards)]
            staging = stage.staging_dir()
            write_jsonl_atomic(staging / "candidates.jsonl", rows)
            stage.commit(staging, {"prompts": len(rows), "candidates": sum(map(len, shards)), "sanitized": sanitized})

    def _generate_sharded(self, stage: Stage, tag: str, model_path: str, prompts: list, settings: GenerationSettings):
        """Responses per prompt for ``prompts`` from ``model_path``, in fixed chunks shared out over processes and
        saved as shards in ``stage.partial`` (kept across a kill). Returns (responses, sanitized) on the main
        process and (None, 0) elsewhere."""
        from tqdm.auto import tqdm

        size = self.config.shard_size
        starts = range(0, len(prompts), size)
        paths = [stage.partial / f"{tag}-{c:05d}.jsonl" for c in range(len(starts))]
        todo = [c for c in range(len(starts)) if c % self.state.num_processes == self.state.process_index]
        todo = [c for c in todo if not paths[c].exists()]
        seed = self.args.seed
        if self.config.generation_backend == "vllm":
            todo = [c for c in range(len(starts)) if not paths[c].exists()] if self.state.is_main_process else []
        if todo:
            generate = self._vllm_generator if self.config.generation_backend == "vllm" else self._hf_generator
            sample = generate(model_path, settings)
            for c in tqdm(todo, desc=f"{stage.label} {tag}", disable=not self.state.is_main_process):
                chunk = prompts[starts[c] : starts[c] + size]
                responses, sanitized = sample(chunk, derived_seed(seed, stage.round_index, tag, c))
                write_jsonl_atomic(paths[c], [{"responses": r, "sanitized": n} for r, n in zip(responses, sanitized)])
                kill_point("shard")
            del sample
            _free_memory()
        self.state.wait_for_everyone()
        if not self.state.is_main_process:
            return None, 0
        rows = [row for path in paths for row in read_jsonl(path)]
        if len(rows) != len(prompts):
            raise RuntimeError(f"{stage.partial} holds {len(rows)} generated rows for {len(prompts)} prompts")
        return [row["responses"] for row in rows], sum(row["sanitized"] for row in rows)

    def _hf_generator(self, model_path: str, settings: GenerationSettings):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlhf_pairs.tokenization import model_device

        tokenizer = AutoTokenizer.from_pretrained(model_path)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=self.model_args.dtype or "auto")
        model.to(model_device(self.state.device))

        def sample(prompts, seed):
            return generate_candidates(model, tokenizer, prompts, settings, seed)

        return sample

    def _vllm_generator(self, model_path: str, settings: GenerationSettings):
        try:
            from vllm import LLM, SamplingParams
        except ImportError as e:  # optional extra
            raise ImportError("generation_backend='vllm' needs the vllm extra: pip install 'rlhf-pairs[vllm]'") from e
        from rlhf_pairs.generation import ChatPromptEncoder

        llm = LLM(
            model=model_path,
            tensor_parallel_size=self.config.vllm_tensor_parallel_size,
            gpu_memory_utilization=self.config.vllm_gpu_memory_utilization,
            seed=self.args.seed,
        )
        encoder = ChatPromptEncoder(llm.get_tokenizer())

        def sample(prompts, seed):
            params = [
                SamplingParams(
                    n=settings.num_candidates, temperature=settings.temperature, top_p=settings.top_p,
                    max_tokens=settings.max_new_tokens, seed=derived_seed(seed, i), skip_special_tokens=True,
                )
                for i in range(len(prompts))
            ]  # fmt: skip
            outputs = llm.generate([{"prompt_token_ids": encoder.encode(p)} for p in prompts], params)
            responses, sanitized = [], []
            for output in outputs:
                texts = [encoder.encoder.remove_special(o.text) for o in output.outputs]
                sanitized.append(sum(t != o.text for t, o in zip(texts, output.outputs)))
                responses.append([t.strip() for t in texts])
            return responses, sanitized

        return sample

    # ---- stage 2: rank ----
    def _rank(self, stage: Stage) -> None:
        from rlhf_pairs.rank_dataset import rank_dataset

        cfg = self.config
        candidates = self._stage(stage.round_index, "generate").path / "candidates.jsonl"
        output = stage.partial / "rankings.jsonl"
        summary = rank_dataset(
            RankConfig(
                dataset_name=str(candidates),
                output=str(output),
                ranking_method=cfg.ranking_method,
                seed=self.args.seed,
                shard_size=cfg.shard_size,
                complete_margins=True,
            ),
            self.judge_args,
        )
        if self.state.is_main_process:
            rows = read_jsonl(output)
            margins = [r["margin"] for r in rows if r["margin"] is not None]
            staging = stage.staging_dir()
            (output).rename(staging / "rankings.jsonl")
            stage.commit(
                staging,
                {
                    "ranked": summary["ranked"],
                    "skipped": summary["skipped"],
                    "comparisons": summary["comparisons"],
                    "mean_margin": sum(margins) / len(margins) if margins else None,
                },
            )

    # ---- stage 3: pairs ----
    def _pairs(self, stage: Stage) -> None:
        if not self.state.is_main_process:
            return
        cfg = self.config
        rows = read_jsonl(self._stage(stage.round_index, "rank").path / "rankings.jsonl")
        if cfg.mode == "dpo":
            out, counts = build_dpo_pairs(rows, cfg.pair_strategy, cfg.min_margin, seed=self.args.seed)
            name = "pairs.jsonl"
        else:
            out, counts = build_sft_rows(rows, cfg.min_margin)
            name = "sft.jsonl"
        if not out:
            raise RuntimeError(
                f"{stage.label} kept no rows to train on ({counts}); lower `min_margin` or check the candidates"
            )
        margins = [r["margin"] for r in out if r.get("margin") is not None]
        staging = stage.staging_dir()
        write_jsonl_atomic(staging / name, out)
        stage.commit(staging, {**counts, "mean_margin_kept": sum(margins) / len(margins) if margins else None})

    # ---- stage 4: train ----
    def _train(self, stage: Stage) -> None:
        import datasets
        from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
        from trl import get_peft_config

        k, cfg = stage.round_index, self.config
        pairs_stage = self._stage(k, "pairs")
        rows = read_jsonl(pairs_stage.path / ("pairs.jsonl" if cfg.mode == "dpo" else "sft.jsonl"))
        dataset = datasets.Dataset.from_list([{key: v for key, v in r.items() if key != "margin"} for r in rows])
        policy_path = self.policy_path(k)
        load = {"dtype": self.model_args.dtype or "auto"}
        if self.model_args.attn_implementation:
            load["attn_implementation"] = self.model_args.attn_implementation
        tokenizer = AutoTokenizer.from_pretrained(policy_path)
        model = AutoModelForCausalLM.from_pretrained(policy_path, **load)
        peft_config = get_peft_config(self.model_args)

        class KillPoint(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                kill_point("step")

        args = dataclasses.replace(self.args, output_dir=str(stage.partial))
        if cfg.mode == "dpo":
            from trl import DPOTrainer

            ref_path = self.model_args.model_name_or_path if cfg.reference == "initial" else policy_path
            # Passed explicitly: TRL would otherwise rebuild the reference from the *policy's* path, or, with LoRA,
            # use the policy with its adapter disabled, i.e. the round's starting policy, not the initial one.
            adapter_off_is_reference = peft_config is not None and ref_path == policy_path
            ref_model = None if adapter_off_is_reference else AutoModelForCausalLM.from_pretrained(ref_path, **load)
            trainer = DPOTrainer(
                model=model, ref_model=ref_model, args=args, train_dataset=dataset, processing_class=tokenizer,
                peft_config=peft_config, callbacks=[KillPoint()],
            )  # fmt: skip
        else:
            from trl import SFTTrainer

            # `mode: rejection_sampling` parses the recipe's training fields as TRL's SFTConfig (scripts/iterate.py).
            trainer = SFTTrainer(
                model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                peft_config=peft_config, callbacks=[KillPoint()],
            )  # fmt: skip
        if self.state.is_main_process:
            remove_incomplete_checkpoints(stage.partial)
        self.state.wait_for_everyone()
        checkpoint = last_complete_checkpoint(stage.partial)
        if checkpoint and self.state.is_main_process:
            logger.info("%s: resuming from %s", stage.label, checkpoint)
        trainer.train(resume_from_checkpoint=checkpoint)

        staging = stage.path.with_name(f".{stage.name}.staging")  # same path on every process
        if self.state.is_main_process:
            if staging.exists():
                import shutil

                shutil.rmtree(staging)
            staging.mkdir(parents=True)
        self.state.wait_for_everyone()
        if peft_config:
            if self.state.is_main_process:
                merged = trainer.accelerator.unwrap_model(trainer.model).merge_and_unload()
                merged.save_pretrained(staging)
        else:
            trainer.save_model(str(staging))
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            tokenizer.save_pretrained(staging)
            history = trainer.state.log_history
            write_json_atomic(staging / "log_history.json", history)
            losses = [h["loss"] for h in history if "loss" in h]
            last = next((h for h in reversed(history) if "loss" in h), {})
            summary = {
                "rows": len(rows),
                "steps": trainer.state.global_step,
                "train_loss": mean_logged_loss(history),
                "first_loss": losses[0] if losses else None,
                "last_loss": losses[-1] if losses else None,
                "rewards_accuracy": last.get("rewards/accuracies"),
                "rewards_margin": last.get("rewards/margins"),
                "resumed_from": Path(checkpoint).name if checkpoint else None,
                "policy": policy_path,
                "reference": (self.model_args.model_name_or_path if cfg.reference == "initial" else policy_path)
                if cfg.mode == "dpo"
                else None,
            }
            stage.commit(staging, summary)
        del trainer, model

    # ---- stage 5: eval ----
    def _eval(self, stage: Stage) -> None:
        from rlhf_pairs.win_rate import win_rate_from_probabilities

        cfg, k = self.config, stage.round_index
        settings = GenerationSettings(
            1, cfg.eval_max_new_tokens or cfg.max_new_tokens, cfg.eval_temperature, 1.0, cfg.generation_batch_size
        )
        new_path = str(self._stage(k, "train").path)
        new, _ = self._generate_sharded(stage, "new", new_path, self.eval_prompts, settings)
        previous, _ = self._generate_sharded(stage, "previous", self.policy_path(k), self.eval_prompts, settings)
        if not self.state.is_main_process:
            return
        new, previous = [r[0] for r in new], [r[0] for r in previous]
        judge = self.judge_args.load(self.state.device)
        probabilities = judge.compare(self.eval_prompts, new, previous)
        result = win_rate_from_probabilities(probabilities)
        del judge
        staging = stage.staging_dir()
        write_jsonl_atomic(
            staging / "completions.jsonl",
            [
                {"prompt": p, "new": a, "previous": b, "p_new_better": q}
                for p, a, b, q in zip(self.eval_prompts, new, previous, probabilities)
            ],
        )
        stage.commit(staging, dataclasses.asdict(result))

    # ---- metrics ----
    def _stage(self, k: int, name: str) -> Stage:
        return next(s for s in self.stages if s.round_index == k and s.name == name)

    def collect_metrics(self) -> list[dict]:
        """One row per round with every finished stage's summary (prefixed by the stage name)."""
        rounds = []
        for k in range(1, self.config.rounds + 1):
            row = {"round": k}
            for stage in self.stages:
                if stage.round_index == k and stage.is_done():
                    row.update({f"{stage.name}/{key}": v for key, v in stage.record()["summary"].items()})
            if len(row) > 1:
                rounds.append(row)
        return rounds

    def write_metrics(self) -> None:
        metrics = self.collect_metrics()
        write_jsonl_atomic(self.root / "metrics.jsonl", metrics)
        if metrics:
            plot_metrics(metrics, self.root / "metrics.png")


def _checkpoints(directory: Path) -> list[Path]:
    """``checkpoint-<step>`` directories in ``directory``, newest (highest step) first."""
    found = [p for p in directory.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(found, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True)


def last_complete_checkpoint(directory: Path) -> str | None:
    """The newest ``checkpoint-<step>`` in ``directory`` holding ``trainer_state.json``, or ``None``.

    The Trainer writes ``trainer_state.json`` last, so a checkpoint killed while being saved lacks it; resuming
    from it would fail on every re-run (``transformers.trainer_utils.get_last_checkpoint`` picks it anyway)."""
    return next((str(p) for p in _checkpoints(directory) if (p / "trainer_state.json").is_file()), None)


def remove_incomplete_checkpoints(directory: Path) -> None:
    """Delete the ``checkpoint-<step>`` directories without ``trainer_state.json`` (killed while being saved)."""
    import shutil

    for path in _checkpoints(directory):
        if not (path / "trainer_state.json").is_file():
            logger.warning("removing incomplete checkpoint %s (no trainer_state.json)", path)
            shutil.rmtree(path)


def mean_logged_loss(history: list[dict]) -> float | None:
    """Mean training loss per step from a Trainer's ``log_history``: each logged ``loss`` (the mean since the
    previous log) weighted by the steps it covers; ``None`` when no loss was logged.

    Unlike the Trainer's ``train_loss`` (the mean over the steps since the last resume) it covers the whole
    training, since the log history is restored from the checkpoint; steps after the last log are not counted
    (none with ``logging_steps: 1``)."""
    total, steps, previous = 0.0, 0, 0
    for entry in history:
        if "loss" in entry and entry["step"] > previous:
            total += entry["loss"] * (entry["step"] - previous)
            steps += entry["step"] - previous
            previous = entry["step"]
    return total / steps if steps else None


def run_loop(
    config: IterateConfig, judge_args: JudgeArguments, training_args, model_args
) -> tuple[IterativeLoop, list[dict]]:
    """Set up, run and clean up an :class:`IterativeLoop`; returns it (for its process state) and the metrics."""
    loop = IterativeLoop(config, judge_args, training_args, model_args)
    loop.setup()
    try:
        metrics = loop.run()
    finally:
        loop.cleanup()
    return loop, metrics
