"""The ``iterate`` job: iterative DPO (or rejection sampling) with a pairwise judge, resumable, on accelerate.

Round k (1-based) runs five stages, each written atomically to ``<output_dir>/round_k/<stage>/`` with a ``DONE``
marker and a ``stage.json`` holding the fingerprint of the configuration that produced it (see
:mod:`rlhf_pairs.trainer.stages`; the plan and its fingerprints: :mod:`rlhf_pairs.trainer.iterative_plan`):

1. ``generate``: ``num_candidates`` samples per prompt of the round's prompt slice from the round's policy
   (round 1: ``model_name_or_path``; round k: round k-1's trained model), HF ``generate`` sharded over processes
   (or vLLM on the main process; :func:`rlhf_pairs.generation.generate_sharded`). Candidates depend only on
   (prompts, policy, settings, seed): chunks of ``shard_size`` prompts are sampled with a seed derived from
   (seed, round, chunk), whichever process runs them.
2. ``rank``: the rank job (:mod:`rlhf_pairs.rank_dataset`) with the pair judge, knockout by default, plus one extra
   match where best and worst did not meet, so every prompt has P(best beats worst) (its ``margin``).
3. ``pairs``: DPO pairs (``max_min`` or ``max_random``) or, with ``mode: rejection_sampling``, SFT rows of the best
   candidates; ``min_margin`` drops prompts whose best beats their worst with a lower probability. Dropped rows are
   counted by reason (:mod:`rlhf_pairs.pairs`). With ``mode: sppo`` the rank stage plays a round robin and keeps
   each prompt's P matrix, and the pairs are uclaml/SPPO's: chosen/rejected with the win-rate targets
   ``chosen_probs``, ``chosen_probs_win``, ``chosen_probs_lose`` (:func:`~rlhf_pairs.pairs.build_sppo_pairs`), in
   ``pairs.jsonl`` and, for uclaml/SPPO's own ``run_sppo.py`` (which loads a folder), in ``train.parquet``; the
   summary adds the targets' means and spreads.
4. ``train``: TRL's ``DPOTrainer`` (reference = the initial policy, or the round's starting policy with
   ``reference: previous``, passed explicitly), its subclass with SPPO's loss for ``mode: sppo``
   (:mod:`rlhf_pairs.trainer.sppo_trainer`), or ``SFTTrainer`` (:mod:`rlhf_pairs.trainer.round_training`); LoRA
   through TRL's ``ModelConfig`` (``use_peft``), merged into the saved model. Trainer checkpoints go to
   ``train.partial/``; a killed training resumes from the last complete one.
5. ``eval`` (when there are held-out prompts): greedy completions of the new and the previous policy, judged
   pairwise; ``win_rate`` of the new policy.

After every stage the main process rewrites ``metrics.jsonl`` (one row per round: pairs kept, judge margin, DPO
losses, win rate, ...) and ``metrics.png`` from the finished stages' records, and sends each finished round's
numbers to the ``report_to`` trackers (:mod:`rlhf_pairs.trainer.iterative_metrics`).

**Resume**: re-running the same command skips every finished stage whose fingerprint matches, and continues the
first unfinished one from its partial work (finished shards, the last trainer checkpoint). A finished stage whose
fingerprint differs from the current config raises :class:`~rlhf_pairs.trainer.stages.StageConfigChanged`; ``--redo``
discards it and every later stage instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from pathlib import Path

from accelerate.utils.memory import clear_device_cache

from rlhf_pairs.configs import IterateConfig, JudgeArguments, RankConfig
from rlhf_pairs.data_utils import PROMPT_NOTES, judge_prompt
from rlhf_pairs.generation import GenerationSettings, generate_sharded, hf_generator, vllm_generator
from rlhf_pairs.pairs import build_dpo_pairs, build_sft_rows, build_sppo_pairs, sppo_target_summary
from rlhf_pairs.trainer.iterative_metrics import RoundLogger, collect_metrics, start_trackers, write_metrics
from rlhf_pairs.trainer.iterative_plan import load_prompts, plan_stages
from rlhf_pairs.trainer.round_training import train_round
from rlhf_pairs.trainer.stages import Stage, StageConfigChanged
from rlhf_pairs.utils.distributed import get_logger
from rlhf_pairs.utils.faults import check_stop, scope, stop_on_signals
from rlhf_pairs.utils.hashing import derived_seed
from rlhf_pairs.utils.io import read_jsonl, write_json_atomic, write_jsonl_atomic
from rlhf_pairs.utils.locking import main_process_lock

logger = get_logger(__name__)


class IterativeLoop:
    """R rounds of generate -> rank -> pairs -> train -> eval, resumable stage by stage (see the module docs).

    Use: ``loop = IterativeLoop(config, judge_args, training_args, model_args); loop.setup(); metrics = loop.run();
    loop.cleanup()`` (or :func:`run_loop`). Every process of an ``accelerate launch`` runs the same calls.

    Features: per-round prompt slices or per-round prompt sets (``{round}`` in ``dataset_name``); HF or vLLM
    generation, reproducible for any number of processes; knockout or round-robin ranking with the pair judge; DPO
    (``DPOConfig`` fields), SPPO (``DPOConfig`` with ``loss_type`` sppo or sppo_single) or rejection sampling
    (``SFTConfig`` fields), LoRA merged after each round; held-out win
    rate; ``metrics.jsonl``/``metrics.png`` and the ``report_to`` trackers; stage-by-stage resume after a kill;
    refusal (or ``--redo``) of finished stages whose configuration changed. Models load through
    :mod:`rlhf_pairs.utils.models` (``ModelConfig`` and ``model_init_kwargs``), all but the trained ones whole
    even under ZeRO-3 (:func:`~rlhf_pairs.utils.distributed.zero3_init_disabled`).

    **Assumptions**: all processes see ``output_dir`` (one machine, or a shared file system); the policy has a chat
    template (which takes a system turn if the prompts have one); prompts pass
    :func:`~rlhf_pairs.data_utils.prepare_prompt` (a string or user/assistant turns ending with a user turn, led by
    system turns that only the policy sees as they are: the judge gets them per ``system_message``). Candidates are
    bit-identical for 1 or K processes on the same device type and dtype; training
    results depend on the number of processes like any data-parallel training. The train stage's fingerprint holds
    the trainer config fields that differ from their declared defaults, so a run finished before that rule (or
    under another transformers release that changed a default) is refused once as changed.

    **Stopping**: one run per ``output_dir`` (an OS lock on ``<output_dir>.lock`` that names a live holder and dies
    with it); under :func:`run_loop`, SIGINT/SIGTERM stop the run promptly, also when a finaliser swallowed the
    interrupt (it is raised again at the next shard, step or stage), and the finished stages stay resumable.

    **Raises**: ``ValueError`` for a bad config or dataset (named), a trainer config of the wrong class for
    ``mode`` or an SPPO ``loss_type`` with another mode (and another ``loss_type`` with ``mode: sppo``); :class:`~rlhf_pairs.trainer.stages.StageConfigChanged` for a changed finished stage; ``RuntimeError``
    when a round keeps no pairs to train on; :class:`~rlhf_pairs.utils.locking.OutputLocked` when another run uses
    ``output_dir``; ``KeyboardInterrupt`` / ``SystemExit`` on SIGINT / SIGTERM.
    """

    def __init__(self, config: IterateConfig, judge_args: JudgeArguments, training_args, model_args):
        from trl import DPOConfig, SFTConfig

        if not model_args.model_name_or_path:
            raise ValueError("`model_name_or_path` (the initial policy) is required")
        expected = SFTConfig if config.mode == "rejection_sampling" else DPOConfig
        if not isinstance(training_args, expected):
            raise ValueError(
                f"`mode: {config.mode}` trains with TRL's {expected.__name__}, got {type(training_args).__name__}"
            )
        if expected is DPOConfig:
            from rlhf_pairs.trainer.sppo_trainer import SPPO_LOSS_TYPES, is_sppo_loss

            loss_types = list(training_args.loss_type)
            if config.mode == "sppo" and (len(loss_types) != 1 or loss_types[0] not in SPPO_LOSS_TYPES):
                raise ValueError(
                    f"`mode: sppo` trains with SPPO's loss: set `loss_type` to one of {SPPO_LOSS_TYPES}, got "
                    f"{training_args.loss_type}"
                )
            if config.mode == "dpo" and is_sppo_loss(training_args):
                raise ValueError(
                    f"`loss_type` {training_args.loss_type} reads SPPO's win-rate targets, which only `mode: sppo` "
                    "builds"
                )
        self.config = config
        self.judge_args = judge_args
        self.args = training_args
        self.model_args = model_args
        self.root = Path(training_args.output_dir)
        self.round_logger = RoundLogger([])

    # ---- setup: prompts, plan, refusal of changed stages, trackers ----
    def setup(self) -> None:
        from rlhf_pairs.utils.distributed import process_state, process_timeout

        # Processes wait at barriers while rank 0 generates (vLLM) or on uneven shards: a long timeout, not the
        # 30 minutes of `ddp_timeout` the parsed TrainingArguments created the process group with.
        self.state = process_state(max(process_timeout(), self.args.ddp_timeout_delta))
        # One run per output_dir, for the whole run (released by cleanup, or when the process dies).
        self._lock = contextlib.ExitStack()
        self._lock.enter_context(main_process_lock(self.root, self.state))
        self.prompt_notes = Counter(dict.fromkeys(PROMPT_NOTES, 0))  # prompts the one prompt rule changed, by kind
        self.round_prompts, self.eval_prompts = load_prompts(self.config, self.prompt_notes)
        self.stages = plan_stages(
            self.root, self.config, self.judge_args, self.args, self.model_args, self.round_prompts, self.eval_prompts
        )
        logger.info(
            "iterate: %d round(s) of %s prompts, %d eval prompts, %d process(es), output %s",
            self.config.rounds, len(self.round_prompts[0]), len(self.eval_prompts), self.state.num_processes, self.root,
        )  # fmt: skip
        if self.state.is_main_process:
            self._check_finished_stages()
            write_json_atomic(self.root / "iterate_config.json", self._config_record())
            trackers = start_trackers(
                self.args.report_to, self.args.project, self.root / "runs", dataclasses.asdict(self.config)
            )
            self.round_logger = RoundLogger(trackers)
        self.state.wait_for_everyone()

    def _config_record(self) -> dict:
        return {
            "iterate": dataclasses.asdict(self.config),
            "prompt_notes": dict(self.prompt_notes),
            "judge": dataclasses.asdict(self.judge_args),
            "training": self.args.to_dict(),
            "model": dataclasses.asdict(self.model_args),
        }

    def policy_path(self, k: int) -> str:
        """The policy round ``k`` starts from (and generates with)."""
        return self.model_args.model_name_or_path if k == 1 else str(self.root / f"round_{k - 1}" / "train")

    def reference_path(self, k: int) -> str:
        """The DPO reference of round ``k``: the initial policy, or with ``reference: previous`` the round's start."""
        return self.model_args.model_name_or_path if self.config.reference == "initial" else self.policy_path(k)

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
        if self.state.is_main_process:  # the rounds a previous run finished, so a tracker run holds them all
            self._log_rounds(collect_metrics(self.stages, self.config.rounds))
        for stage in self.stages:
            check_stop()  # a SIGINT/SIGTERM that a finaliser swallowed still stops the run here
            if stage.check():
                logger.info("%s: finished earlier, reused", stage.label)
                continue
            start = time.perf_counter()
            logger.info("%s: running", stage.label)
            if self.state.is_main_process:
                stage.begin_partial()
            self.state.wait_for_everyone()
            # Only training is DeepSpeed's: the other stages load whole models for inference even under ZeRO-3.
            inference = contextlib.nullcontext() if stage.name == "train" else zero3_init_disabled()
            with scope(stage.label), inference:
                runners[stage.name](stage)
            clear_device_cache(garbage_collection=True)
            self.state.wait_for_everyone()
            logger.info("%s: done in %.1f s", stage.label, time.perf_counter() - start)
            if self.state.is_main_process:
                metrics = collect_metrics(self.stages, self.config.rounds)
                write_metrics(self.root, metrics)
                self._log_rounds(metrics)
        metrics = collect_metrics(self.stages, self.config.rounds)
        if self.state.is_main_process:
            write_metrics(self.root, metrics)
        return metrics

    def _log_rounds(self, metrics: list[dict]) -> None:
        """Send the rounds whose stages are all finished to the trackers (each once)."""
        finished = {k for k in range(1, self.config.rounds + 1) if all(s.is_done() for s in self._round(k))}
        self.round_logger.log(metrics, finished)

    def cleanup(self) -> None:
        """Finish the trackers, release the output's lock and the devices' memory; safe after a failed setup."""
        if getattr(self, "round_logger", None) is not None:
            self.round_logger.finish()
        if getattr(self, "_lock", None) is not None:
            self._lock.close()
        clear_device_cache(garbage_collection=True)

    # ---- stage 1: generate ----
    def _generate(self, stage: Stage) -> None:
        cfg = self.config
        prompts = self.round_prompts[stage.round_index - 1]
        settings = GenerationSettings(
            cfg.num_candidates, cfg.max_new_tokens, cfg.generation_temperature, cfg.generation_top_p,
            cfg.generation_batch_size,
        )  # fmt: skip
        responses, sanitized = self._generate_sharded(
            stage, "candidates", self.policy_path(stage.round_index), prompts, settings
        )
        if self.state.is_main_process:
            rows = [{"prompt": p, "responses": r} for p, r in zip(prompts, responses)]
            staging = stage.staging_dir()
            write_jsonl_atomic(staging / "candidates.jsonl", rows)
            stage.commit(
                staging, {"prompts": len(rows), "candidates": sum(map(len, responses)), "sanitized": sanitized}
            )

    def _generate_sharded(self, stage: Stage, tag: str, model_path: str, prompts: list, settings: GenerationSettings):
        """:func:`~rlhf_pairs.generation.generate_sharded` with shards ``<tag>-<chunk>`` in ``stage.partial``."""
        cfg, seed = self.config, self.args.seed
        vllm = cfg.generation_backend == "vllm"

        def make_sampler():
            if vllm:
                return vllm_generator(
                    model_path, settings, seed, cfg.vllm_tensor_parallel_size, cfg.vllm_gpu_memory_utilization
                )
            return hf_generator(self.model_args, self.args, model_path, settings, self.state.device)

        return generate_sharded(
            make_sampler, prompts, stage.partial, tag, cfg.shard_size,
            chunk_seed=lambda c: derived_seed(seed, stage.round_index, tag, c), state=self.state,
            main_process_only=vllm, desc=f"{stage.label} {tag}",
        )  # fmt: skip

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
                system_message=cfg.system_message,
                prob_matrix=cfg.mode == "sppo",
            ),
            self.judge_args,
        )
        if self.state.is_main_process:
            rows = read_jsonl(output)
            margins = [r["margin"] for r in rows if r["margin"] is not None]
            staging = stage.staging_dir()
            output.rename(staging / "rankings.jsonl")
            stage.commit(
                staging,
                {
                    "ranked": summary["ranked"],
                    "skipped": summary["skipped"],
                    "comparisons": summary["comparisons"],
                    "scored": summary["scored"],
                    "mean_margin": sum(margins) / len(margins) if margins else None,
                    **({"judge_usage": summary["judge_usage"]} if "judge_usage" in summary else {}),  # an API judge's
                },
            )

    # ---- stage 3: pairs ----
    def _pairs(self, stage: Stage) -> None:
        if not self.state.is_main_process:
            return
        cfg = self.config
        rows = read_jsonl(self._stage(stage.round_index, "rank").path / "rankings.jsonl")
        targets = {}
        if cfg.mode == "dpo":
            out, counts = build_dpo_pairs(rows, cfg.pair_strategy, cfg.min_margin, seed=self.args.seed)
        elif cfg.mode == "sppo":
            out, counts = build_sppo_pairs(rows, cfg.min_margin)
            targets = sppo_target_summary(out)
        else:
            out, counts = build_sft_rows(rows, cfg.min_margin)
        if not out:
            raise RuntimeError(
                f"{stage.label} kept no rows to train on ({counts}); lower `min_margin` or check the candidates"
            )
        # P(chosen beats rejected) of the kept pairs: their margin, SPPO's chosen_probs
        margins = [r["margin"] if "margin" in r else r.get("chosen_probs") for r in out]
        margins = [m for m in margins if m is not None]
        staging = stage.staging_dir()
        write_jsonl_atomic(staging / self._pairs_file(), out)
        if cfg.mode == "sppo":  # their file too: run_sppo.py loads this folder (its train.parquet) as it is
            import datasets

            datasets.Dataset.from_list(out).to_parquet(str(staging / "train.parquet"))
        stage.commit(
            staging, {**counts, "mean_margin_kept": sum(margins) / len(margins) if margins else None, **targets}
        )

    def _pairs_file(self) -> str:
        return "sft.jsonl" if self.config.mode == "rejection_sampling" else "pairs.jsonl"

    # ---- stage 4: train ----
    def _train(self, stage: Stage) -> None:
        k = stage.round_index
        rows = read_jsonl(self._stage(k, "pairs").path / self._pairs_file())
        staging = stage.path.with_name(f".{stage.name}.staging")  # the same path on every process
        summary = train_round(
            rows, self.policy_path(k), self.reference_path(k), self.args, self.model_args,
            checkpoint_dir=stage.partial, save_dir=staging, state=self.state, label=stage.label,
        )  # fmt: skip
        if self.state.is_main_process:
            stage.commit(staging, summary)

    # ---- stage 5: eval ----
    def _eval(self, stage: Stage) -> None:
        from rlhf_pairs.ranking import check_probabilities
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
        judge_prompts = [judge_prompt(p, cfg.system_message) for p in self.eval_prompts]
        probabilities = check_probabilities(judge, judge.compare(judge_prompts, new, previous), len(new))
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

    # ---- stages ----
    def _stage(self, k: int, name: str) -> Stage:
        return next(s for s in self.stages if s.round_index == k and s.name == name)

    def _round(self, k: int) -> list[Stage]:
        return [s for s in self.stages if s.round_index == k]


def run_loop(
    config: IterateConfig, judge_args: JudgeArguments, training_args, model_args
) -> tuple[IterativeLoop, list[dict]]:
    """Set up, run and clean up an :class:`IterativeLoop`; returns it (for its process state) and the metrics."""
    loop = IterativeLoop(config, judge_args, training_args, model_args)
    with stop_on_signals():  # SIGINT/SIGTERM stop the run for sure; finished stages stay resumable
        try:
            loop.setup()
            metrics = loop.run()
        finally:
            loop.cleanup()
    return loop, metrics
