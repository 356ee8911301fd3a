"""The iterative loop's plan: which prompts each round uses, and every stage of every round with its fingerprint.

Each fingerprint holds the settings that change the stage's result and the digests of the stages it reads
(generate <- policy, rank <- generate, pairs <- rank, train <- pairs + policy, eval <- train), so a change anywhere
reaches every later stage, and a finished stage is reused only when the whole chain behind it is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from enum import Enum
from pathlib import Path

from rlhf_pairs.configs import IterateConfig, JudgeArguments
from rlhf_pairs.data_utils import describe_prompt_notes, load_prompt_rows
from rlhf_pairs.rank_dataset import judge_file_inputs
from rlhf_pairs.trainer.stages import Stage
from rlhf_pairs.utils.distributed import get_logger
from rlhf_pairs.utils.hashing import local_model_sha256, sha256_json

logger = get_logger(__name__)  # main process only (iterate sets up the process state first)

# Trainer config fields that change how a run is logged, saved or launched, not what it trains.
NOT_RESULT_FIELDS = {
    "output_dir",
    "logging_dir",
    "run_name",
    "project",
    "report_to",
    "disable_tqdm",
    "push_to_hub",
    "resume_from_checkpoint",
    "overwrite_output_dir",
    "dataloader_num_workers",
    "ddp_timeout",
    "local_rank",
    "log_level",
    "log_level_replica",
    "log_on_each_node",
}
NOT_RESULT_PREFIXES = ("logging_", "hub_", "push_to_hub", "save_", "trackio_")


def load_prompts(config: IterateConfig, notes: Counter | None = None) -> tuple[list[list], list]:
    """(training prompts of each round, held-out eval prompts) as :class:`IterateConfig`'s data fields describe.

    Prompts are read with :func:`~rlhf_pairs.data_utils.prepare_prompt`, the rule of every job: a chat string
    already rendered with a recognised template becomes its messages (the policy renders them with its own
    template), system turns stay (the judge gets them per ``system_message``); each kind is counted in a warning,
    and added to ``notes`` when given (per :data:`~rlhf_pairs.data_utils.PROMPT_NOTES` key, over every source read).

    Raises ``ValueError`` naming the source (and line) for an empty dataset, a missing prompt column, an invalid
    prompt (a system turn with ``system_message: error``), or too few prompts for ``rounds`` x
    ``prompts_per_round`` plus the held-out ones."""
    cfg = config
    per_round = cfg.prompts_per_round
    if "{round}" in cfg.dataset_name:  # one prompt set per round, e.g. RLHFlow/iterative-prompt-v1-iter{round}-20K
        if cfg.num_eval_prompts and not cfg.eval_dataset_name:
            raise ValueError("with a per-round `dataset_name` template, give held-out prompts as `eval_dataset_name`")
        sources = [cfg.dataset_name.format(round=k) for k in range(1, cfg.rounds + 1)]
        round_prompts = [
            _prompts(cfg, source, cfg.dataset_train_split, cfg.dataset_config, notes)[: per_round or None]
            for source in sources
        ]
        prompts = []
    else:
        round_prompts, prompts = [], _prompts(cfg, cfg.dataset_name, cfg.dataset_train_split, cfg.dataset_config, notes)
    if cfg.eval_dataset_name:
        eval_prompts = _prompts(cfg, cfg.eval_dataset_name, cfg.dataset_test_split, None, notes)[
            : cfg.num_eval_prompts or None
        ]
    elif prompts:
        if cfg.num_eval_prompts >= len(prompts):
            raise ValueError(
                f"`num_eval_prompts`={cfg.num_eval_prompts} leaves no training prompt in {cfg.dataset_name}"
            )
        cut = len(prompts) - cfg.num_eval_prompts
        prompts, eval_prompts = prompts[:cut], prompts[cut:]
    else:
        eval_prompts = []
    if prompts:
        if per_round is not None and per_round * cfg.rounds > len(prompts):
            raise ValueError(
                f"{cfg.dataset_name} has {len(prompts)} training prompts; {cfg.rounds} rounds of `prompts_per_round`="
                f"{per_round} need {per_round * cfg.rounds}"
            )
        round_prompts = [
            prompts if per_round is None else prompts[k * per_round : (k + 1) * per_round] for k in range(cfg.rounds)
        ]
    return round_prompts, eval_prompts


def _prompts(
    config: IterateConfig, source: str, split: str, dataset_config: str | None = None, counts: Counter | None = None
) -> list:
    _, prompts, notes = load_prompt_rows(source, config.prompt_column, config.system_message, dataset_config, split)
    for line in describe_prompt_notes(notes, config.system_message):
        logger.warning("%s: %s", source, line)
    if counts is not None:
        counts.update(notes)
    return prompts


def _prompt_source(config: IterateConfig, round_index: int | None) -> str:
    """Where round ``round_index``'s prompts (``None``: the held-out prompts) are read from, for messages."""
    cfg = config
    if round_index is None and cfg.eval_dataset_name:
        return f"{cfg.eval_dataset_name!r} (split {cfg.dataset_test_split!r})"
    name = cfg.dataset_name.format(round=round_index) if "{round}" in cfg.dataset_name else cfg.dataset_name
    configuration = f"configuration {cfg.dataset_config!r}, " if cfg.dataset_config else ""
    return f"{name!r} ({configuration}split {cfg.dataset_train_split!r})"


def _plain(value):
    """``value`` as ``TrainingArguments.to_dict()`` writes it (enums as their values, configs as dicts), then as
    JSON reads it back, so a field's value and its declared default compare alike."""
    if isinstance(value, Enum):
        value = value.value
    elif isinstance(value, (list, tuple)):
        value = [v.value if isinstance(v, Enum) else v for v in value]
    elif hasattr(value, "to_dict"):
        value = value.to_dict()
    return json.loads(json.dumps(value, default=str))


def training_fingerprint(training_args) -> dict:
    """The trainer config fields that change what a round trains: those whose value differs from the config
    class's declared default (``default`` / ``default_factory``), minus logging, saving, hub and launch fields.

    A field that a new transformers or TRL release adds with its default value therefore leaves the fingerprint,
    and every finished run, unchanged. Values are ``to_dict()``'s (tokens masked, enums as values). Fields
    without a default are always included."""
    values = training_args.to_dict()
    fingerprint = {}
    for f in dataclasses.fields(training_args):
        name = f.name
        if not f.init or name in NOT_RESULT_FIELDS or name.startswith(NOT_RESULT_PREFIXES) or name.endswith("_token"):
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            fingerprint[name] = values[name]
            continue
        if _plain(values[name]) != _plain(default):
            fingerprint[name] = values[name]
    return fingerprint


def plan_stages(
    root: Path,
    config: IterateConfig,
    judge_args: JudgeArguments,
    training_args,
    model_args,
    round_prompts: list[list],
    eval_prompts: list,
) -> list[Stage]:
    """Every stage of every round in run order (generate, rank, pairs, train, and eval when there are held-out
    prompts), each with its fingerprint; each fingerprint chains the digests of the stages it reads."""
    cfg, seed = config, training_args.seed
    model_keys = ("model_name_or_path", "model_revision", "dtype", "attn_implementation")
    model = {k: getattr(model_args, k) for k in model_keys}
    init_kwargs = training_args.to_dict().get("model_init_kwargs")
    if init_kwargs:  # generation loads the policy with them too; absent when unset, as before they were honoured
        model["model_init_kwargs"] = init_kwargs
    training = training_fingerprint(training_args)
    peft = {k: v for k, v in dataclasses.asdict(model_args).items() if k.startswith(("lora_", "use_"))}
    judge = judge_args.result_fields()
    if cfg.system_message != "merge":  # recorded only when not the default, so finished runs still resume
        judge["system_message"] = cfg.system_message
    # Content digests of the local models and template the stages read (not chained, see fingerprint_digest): a
    # judge or initial policy retrained into the same folder is refused by the first stage that reads it.
    judge_inputs = judge_file_inputs(judge)
    initial_files, initial_inputs = {}, {}
    if Path(model_args.model_name_or_path).exists():
        initial_files = {"model_sha256": local_model_sha256(model_args.model_name_or_path)}
        initial_inputs = {
            "model_sha256": f"the initial policy's files in {Path(model_args.model_name_or_path).resolve()}"
        }
    stages, previous_train = [], None
    for k in range(1, cfg.rounds + 1):
        policy = model if k == 1 else {"round": k - 1, "train": previous_train.digest}
        reads_initial = initial_files if k == 1 else {}
        generate = Stage(root, k, "generate", {
            "policy": policy, **reads_initial,
            "prompts_sha256": sha256_json(round_prompts[k - 1]),
            "seed": seed,
            **{f: getattr(cfg, f) for f in (
                "num_candidates", "generation_temperature", "generation_top_p", "max_new_tokens",
                "generation_batch_size", "generation_backend", "shard_size",
            )},
        }, inputs={"prompts_sha256": f"the prompts of round {k} read from {_prompt_source(cfg, k)}",
                   **initial_inputs})  # fmt: skip
        rank = Stage(root, k, "rank", {
            "generate": generate.digest, **judge, "method": cfg.ranking_method,
            **({"prob_matrix": True} if cfg.mode == "sppo" else {}),  # only then, so finished runs still resume
        }, inputs=judge_inputs)  # fmt: skip
        pairs = Stage(root, k, "pairs", {
            "rank": rank.digest, "mode": cfg.mode, "pair_strategy": cfg.pair_strategy,
            "min_margin": cfg.min_margin, "seed": seed,
        })  # fmt: skip
        reads_initial = initial_files if k == 1 or cfg.reference == "initial" else {}  # the policy or reference
        train = Stage(root, k, "train", {
            "pairs": pairs.digest, "policy": policy, "reference": cfg.reference, "initial": model,
            "training": training, "peft": peft, **reads_initial,
        }, inputs=initial_inputs)  # fmt: skip
        stages += [generate, rank, pairs, train]
        if eval_prompts:
            stages.append(Stage(root, k, "eval", {
                "train": train.digest, "previous": policy, "prompts_sha256": sha256_json(eval_prompts),
                "max_new_tokens": cfg.eval_max_new_tokens or cfg.max_new_tokens,
                "temperature": cfg.eval_temperature, "seed": seed, **judge, **(initial_files if k == 1 else {}),
            }, inputs={"prompts_sha256": f"the held-out prompts read from {_prompt_source(cfg, None)}",
                       **judge_inputs, **initial_inputs}))  # fmt: skip
        previous_train = train
    return stages
