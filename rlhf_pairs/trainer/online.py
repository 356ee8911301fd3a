"""Online training with a pair judge as the reward, shared by the ``online-dpo`` and ``grpo`` jobs: the steps that
turn their arguments (:class:`~rlhf_pairs.configs.OnlineConfig`, :class:`~rlhf_pairs.configs.JudgeArguments`, a TRL
trainer config, ``trl.ModelConfig``) into a policy, prompts, a reward function, a win-rate callback and a trained,
saved model."""

from __future__ import annotations

from pathlib import Path

from rlhf_pairs.configs import JudgeArguments, OnlineConfig
from rlhf_pairs.data_utils import describe_prompt_notes, load_split, prepare_prompts, row_locator, split_names
from rlhf_pairs.rewards import PairwiseRewardFunction
from rlhf_pairs.utils.distributed import get_logger
from rlhf_pairs.utils.models import load_causal_lm, load_tokenizer

logger = get_logger(__name__)  # main process only (rlhf_pairs.utils.distributed)


def load_prompt_splits(args: OnlineConfig):
    """(train prompts, win-rate prompts or ``None``) as datasets with only the ``prompt`` column.

    The win-rate prompts are the first ``win_rate_prompts`` of ``dataset_test_split`` when it exists, else the
    last ``win_rate_prompts`` of the train split, which are then left out of training.

    Every prompt is read up front with the rule every job applies (:func:`~rlhf_pairs.data_utils.prepare_prompt`
    under ``system_message``), so a prompt the judge cannot read (or a system turn with ``system_message: error``)
    stops the job before training, naming the file and line; the prompts it changed for the judge (system turns
    merged or dropped, chat strings already rendered with a template) are counted in a warning. The datasets keep
    the prompts as given: the policy sees them whole, the reward function applies the same rule.
    Raises ``ValueError`` when the train split or its ``prompt`` column is missing, or for a bad prompt.
    """
    splits = split_names(args.dataset_name, args.dataset_config)
    if args.dataset_train_split not in splits and splits != ["train"]:
        raise ValueError(f"{args.dataset_name} has no split {args.dataset_train_split!r}; it has {splits}")
    train = _checked_prompts(args, args.dataset_train_split)
    if not args.win_rate_prompts:
        return train, None
    if args.dataset_test_split in splits and args.dataset_test_split != args.dataset_train_split:
        test = _checked_prompts(args, args.dataset_test_split)
        return train, test.select(range(min(args.win_rate_prompts, len(test))))
    n = min(args.win_rate_prompts, len(train) - 1)
    logger.info("no %r split: holding out the last %d train prompts for the win rate", args.dataset_test_split, n)
    return train.select(range(len(train) - n)), train.select(range(len(train) - n, len(train)))


def _checked_prompts(args: OnlineConfig, split: str):
    """The ``prompt`` column of ``split``, every prompt checked (:func:`~rlhf_pairs.data_utils.prepare_prompts`)."""
    lines: list[int] = []
    dataset = load_split(args.dataset_name, args.dataset_config, split, line_numbers=lines)
    if "prompt" not in dataset.column_names:
        raise ValueError(f"{args.dataset_name} needs a 'prompt' column; it has {dataset.column_names}")
    dataset = dataset.select_columns(["prompt"])
    source = args.dataset_name if lines else f"{args.dataset_name} (split {split!r})"
    _, _, notes = prepare_prompts(dataset["prompt"], row_locator(source, lines), args.system_message)
    for line in describe_prompt_notes(notes, args.system_message):
        logger.warning("%s: %s", source, line)
    return dataset


def load_policy(model_args, training_args):
    """The policy (``AutoModelForCausalLM``) and its tokenizer from a ``trl.ModelConfig`` and the trainer config
    (:mod:`rlhf_pairs.utils.models`); a tokenizer without a pad token pads with its EOS token."""
    return load_causal_lm(model_args, training_args), load_tokenizer(model_args, training_args, pad_with_eos=True)


def build_reward(judge, args: OnlineConfig, layout: str, num_generations: int | None = None) -> PairwiseRewardFunction:
    """The reward function for a trainer: ``layout="pairs"`` for OnlineDPO, ``"groups"`` for GRPO/RLOO.

    ``num_generations``: the trainer's group size, for ``"groups"``. Pass it: without it a group is a run of equal
    prompts, so two groups of a prompt that appears twice in the dataset and lands twice in a row are ranked as
    one. (It must then also be the group size of any evaluation, i.e. GRPO's ``num_generations_eval`` unset.)"""
    return PairwiseRewardFunction(
        judge,
        layout=layout,
        method=args.ranking_method,
        num_generations=num_generations,
        seed=args.ranking_seed,
        system_message=args.system_message,
    )


def add_win_rate_callback(trainer, judge, args: OnlineConfig, prompts) -> None:
    """Attach a :class:`~rlhf_pairs.PairwiseWinRateCallback` over ``prompts`` (a dataset or ``None``: no-op)."""
    if prompts is None:
        return
    from rlhf_pairs.trainer.callbacks import PairwiseWinRateCallback

    trainer.add_callback(
        PairwiseWinRateCallback(
            judge,
            trainer,
            prompts=prompts["prompt"],
            freq=args.win_rate_steps,
            max_new_tokens=args.win_rate_max_new_tokens,
            system_message=args.system_message,
        )
    )


def save_and_finish(trainer, output_dir: str) -> None:
    """Save the model (and, on the main process, ``trainer_state.json`` with the log history), then end the run."""
    trainer.save_model(output_dir)
    if trainer.accelerator.is_main_process:
        trainer.state.save_to_json(str(Path(output_dir) / "trainer_state.json"))
    trainer.accelerator.wait_for_everyone()
    if hasattr(trainer, "end"):  # transformers >= 5.18: finish the trackers, destroy the process group
        trainer.end()


def train_with_pair_judge(
    script_args: OnlineConfig, judge_args: JudgeArguments, training_args, model_args, trainer_class, layout: str
):
    """The body of every online job: load the policy, judge and prompts, train ``trainer_class`` with the pair
    judge's reward (``layout`` as in :func:`build_reward`; ``"groups"`` uses the trainer config's
    ``num_generations``, so a prompt sampled twice in a row still makes two groups) logging the judge's
    ``rewards/pairwise_judge/{decisiveness,clear_winner_rate}``, attach the win-rate callback, save; returns the
    trainer. The trainer prints its step bar, a line per win-rate evaluation and one at the end, not its per-step log
    records (:func:`~rlhf_pairs.trainer.console.quiet_trainer_console`)."""
    from trl import get_peft_config

    from rlhf_pairs.trainer.console import quiet_trainer_console
    from rlhf_pairs.utils.verbosity import filter_known_noise

    filter_known_noise()  # TRL's calls of transformers' deprecated aliases; DeepSpeed's CPU notice

    train_prompts, win_rate_prompts = load_prompt_splits(script_args)  # a bad prompt fails before any model loads
    model, tokenizer = load_policy(model_args, training_args)
    # training_args.device sets up the process group the way the trainer will (PartialState() alone would ignore
    # use_cpu and, on a CPU-only machine, see each launched process as a separate run). Every process holds its
    # own judge; it is never wrapped by DeepSpeed.
    judge = judge_args.load(training_args.device)
    num_generations = training_args.num_generations if layout == "groups" else None
    reward = build_reward(judge, script_args, layout=layout, num_generations=num_generations)
    # OnlineDPO's own reference is a copy of the policy (create_reference_model), which TRL refuses under ZeRO-3:
    # load the same weights from the same path instead.
    reference = (
        {"ref_model": load_causal_lm(model_args, training_args)}
        if layout == "pairs" and not model_args.use_peft
        else {}
    )
    trainer = trainer_class(
        model=model,
        **reference,
        reward_funcs=[reward],
        args=training_args,
        train_dataset=train_prompts,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    quiet_trainer_console(trainer)
    reward.log_metrics_to(trainer)  # OnlineDPO: the judge's metrics into trainer.stats (GRPO passes log_metric)
    add_win_rate_callback(trainer, judge, script_args, win_rate_prompts)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    save_and_finish(trainer, training_args.output_dir)
    return trainer
