"""Every job's arguments, as dataclasses that TRL's ``TrlParser`` fills from a recipe YAML and command-line flags.

A job's parser is a tuple of dataclasses, as in TRL's scripts (``ScriptArguments``, a trainer config,
``ModelConfig``): the job's own config below, :class:`JudgeArguments` for every job that loads a judge, and, for
training jobs, TRL's trainer config and ``ModelConfig``. A recipe YAML holds the fields of those dataclasses and
nothing else. The same idea has the same name in every job:

- datasets: TRL's ``ScriptArguments`` names (``dataset_name``, ``dataset_config``, ``dataset_train_split``,
  ``dataset_test_split``);
- the judge: the ``judge_*`` fields of :class:`JudgeArguments`, default ``judge_type: pair_lm`` everywhere;
- the ranking method: ``ranking_method`` (``knockout`` or ``round_robin``).

Defaults that differ from the libraries they extend are said in the field's help.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf_pairs.data_utils import SYSTEM_MESSAGE_MODES
from rlhf_pairs.judges.constants import CANDIDATE_MAX_LENGTH, MAX_LENGTH, SOURCE_MAX_LENGTH
from rlhf_pairs.judges.loading import JUDGE_TYPES, is_import_path, resolve_judge_class
from rlhf_pairs.judges.templates import TEMPLATE_NAMES
from rlhf_pairs.pairs import PAIR_STRATEGIES
from rlhf_pairs.ranking import METHODS
from rlhf_pairs.utils.hashing import CONTENT_KEYS, judge_file_digests

if TYPE_CHECKING:  # parsed at --help: no torch here
    import torch

    from rlhf_pairs.ranking import SupportsCompare

MODES = ("dpo", "rejection_sampling", "sppo")
GENERATIVE_JUDGE_TYPES = ("llm", "openai")  # the judge types that take a template and labels
REFERENCES = ("initial", "previous")
BACKENDS = ("hf", "vllm")
ORDERS = ("both", "random", "as_is")
LABEL_FORMATS = ("judge", "rlhflow")
OVERLONG = ("truncate", "drop")
PAIRRM_LOSSES = ("both_orders", "instructgpt")


def check_choice(name: str, value: object, allowed: Collection[Any]) -> None:
    """Raise ``ValueError`` naming the field when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}")


def check_positive(config: object, *names: str, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming the first field of ``names`` (ignoring ``None``) below ``minimum``."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value < minimum:
            raise ValueError(f"`{name}` must be >= {minimum}, got {value}")


@dataclass
class JudgeArguments:
    """The judge every job loads (rank, eval, iterate, online-dpo, grpo), under the same names in every job.

    ``None`` for ``judge_attn_implementation``, ``judge_max_length`` or ``judge_batch_tokens`` keeps the judge's own
    default; ``judge_max_length`` applies to the pair LM and the reward model (PairRM's budgets are fixed by its
    card). ``judge_type`` also takes a judge class by import path (:mod:`rlhf_pairs.judges.loading`).
    """

    judge: str = field(metadata={"help": "Judge model: Hub name or local path."})
    judge_type: str = field(
        default="pair_lm",
        metadata={"help": f"One of {JUDGE_TYPES}, or your judge class by import path: 'my_pkg.my_module:MyJudge'."},
    )
    judge_dtype: str = field(default="auto", metadata={"help": "'auto' (bf16 on CUDA, fp32 on CPU) or a dtype."})
    judge_attn_implementation: str | None = field(default=None, metadata={"help": "e.g. sdpa, flash_attention_2."})
    judge_temperature: float = field(default=1.0, metadata={"help": "Judge temperature."})
    judge_max_length: int | None = field(
        default=None, metadata={"help": "Pair LM / reward model truncation length (default: the model's maximum)."}
    )
    judge_batch_tokens: int | None = field(default=None, metadata={"help": "Padded tokens per judge batch."})
    judge_pairrm_format: str = field(
        default="card",
        metadata={
            "help": "PairRM input format: 'card' (the model card's tokenize_pair; tokenize_conv_pair for multi-turn) "
            "or 'rewardbench' (reward-bench's PairRM pipeline: tokenize_conv_pair for every prompt)."
        },
    )
    judge_template: str | None = field(
        default=None,
        metadata={
            "help": f"LLM-as-a-judge prompt (judge_type llm or openai): one of {TEMPLATE_NAMES} or a Jinja file for the "
            "user message. Default: arena_hard for llm, alpaca_eval for openai."
        },
    )
    judge_labels: str | None = field(
        default=None,
        metadata={"help": "The two verdict labels 'first,second' (llm/openai; default: the template's, e.g. 'A,B')."},
    )
    judge_model: str | None = field(
        default=None, metadata={"help": "judge_type openai: the served model's name (default: the server's only one)."}
    )
    judge_max_concurrency: int = field(default=8, metadata={"help": "judge_type openai: requests in flight at once."})
    judge_on_unparsable: str = field(
        default="tie",
        metadata={
            "help": "judge_type openai: an answer with no verdict counts as a tie ('tie', counted) or fails ('error')."
        },
    )
    judge_api_key_env: str = field(
        default="OPENAI_API_KEY",
        metadata={"help": "judge_type openai: the environment variable holding the API key (never written anywhere)."},
    )

    def __post_init__(self) -> None:
        if is_import_path(self.judge_type):
            resolve_judge_class(self.judge_type)  # a bad path fails here, before any work
        else:
            check_choice("judge_type", self.judge_type, JUDGE_TYPES)
        if self.judge_temperature <= 0:
            raise ValueError(f"`judge_temperature` must be > 0, got {self.judge_temperature}")
        check_positive(self, "judge_max_length", "judge_batch_tokens")
        check_choice("judge_pairrm_format", self.judge_pairrm_format, ("card", "rewardbench"))
        if self.judge_type == "remote" and not self.judge.startswith(("http://", "https://")):
            raise ValueError(
                f"judge_type 'remote' needs `judge` to be the server's URL (http://host:port), got {self.judge!r}"
            )
        if self.judge_pairrm_format != "card" and self.judge_type != "pairrm":
            raise ValueError(f"`judge_pairrm_format` applies to judge_type 'pairrm', not {self.judge_type!r}")
        generative = self.judge_type in GENERATIVE_JUDGE_TYPES
        for name in ("judge_template", "judge_labels"):
            if getattr(self, name) is not None and not generative:
                raise ValueError(f"`{name}` applies to judge_type 'llm' or 'openai', not {self.judge_type!r}")
        if self.judge_model is not None and self.judge_type != "openai":
            raise ValueError(f"`judge_model` applies to judge_type 'openai', not {self.judge_type!r}")
        if self.judge_type == "openai" and not self.judge.startswith(("http://", "https://")):
            raise ValueError(
                f"judge_type 'openai' needs `judge` to be the API base URL (http://host:8000/v1), got {self.judge!r}"
            )
        check_choice("judge_on_unparsable", self.judge_on_unparsable, ("tie", "error"))
        check_positive(self, "judge_max_concurrency")
        if generative:
            from rlhf_pairs.judges.templates import load_template

            load_template(self.template_name(), self.label_pair())  # a bad template or labels fail here

    def result_fields(self) -> dict:
        """The fields that change what the judge says (for fingerprints of finished work). A local judge path is
        made absolute, so ``judge/``, ``./judge`` and its absolute path are one judge, and its files' digest is
        recorded (``judge_sha256``, :func:`~rlhf_pairs.utils.hashing.local_model_sha256`), so is a template file's
        (``judge_template_sha256``): a judge retrained into the same folder is another judge. For ``judge_type: remote``
        the URL says nothing about the judge behind it: the server's own description (``/info``: judge, type,
        class, dtype, temperature, max length, format) is recorded, so a server restarted with another judge at the
        same URL does not resume finished work (fetched once per process, waiting for a server that is starting)."""
        keys = ("judge", "judge_type", "judge_dtype", "judge_temperature", "judge_max_length")
        fields = {key: getattr(self, key) for key in keys}
        if Path(self.judge).exists():
            fields["judge"] = str(Path(self.judge).resolve())
        if self.judge_type == "pairrm" and self.judge_pairrm_format != "card":  # absent by default: old runs match
            fields["judge_pairrm_format"] = self.judge_pairrm_format
        if self.judge_type == "remote":  # the server's file digests beside a local judge's, compared the same way
            served = dict(self.served_judge())
            fields.update({key: served.pop(key) for key in CONTENT_KEYS if key in served})
            fields["served"] = served
        template = self.template_name() if self.judge_type in GENERATIVE_JUDGE_TYPES else None
        if template is not None:  # absent for the other types: their finished runs still resume
            fields["judge_template"] = str(Path(template).resolve()) if Path(template).is_file() else template
            if self.judge_labels is not None:
                fields["judge_labels"] = self.label_pair()
        # What a local judge's and template file's files say now: retrained or edited in place, they are other ones.
        fields.update(judge_file_digests(self.judge, template))
        if self.judge_type == "openai":  # the served model, never the key
            fields["judge_model"] = self.judge_model or self.served_model()
            fields["judge_on_unparsable"] = self.judge_on_unparsable
        return fields

    def template_name(self) -> str:
        """The judge prompt of ``judge_type`` llm/openai: ``judge_template`` or the type's default."""
        return self.judge_template or ("alpaca_eval" if self.judge_type == "openai" else "arena_hard")

    def label_pair(self) -> tuple[str, str] | None:
        """``judge_labels`` as a pair, ``None`` when unset (the template's)."""
        if self.judge_labels is None:
            return None
        labels = tuple(label.strip() for label in self.judge_labels.split(","))
        if len(labels) != 2:
            raise ValueError(f"`judge_labels` must be two labels 'first,second', got {self.judge_labels!r}")
        return labels

    def served_model(self) -> str:
        """The only model the OpenAI-compatible server at ``judge`` serves (fetched once per process)."""
        if getattr(self, "_served_model", None) is None:
            from rlhf_pairs.judges.openai_compatible import only_served_model

            self._served_model = only_served_model(self.judge, self.judge_api_key_env)
        return self._served_model

    def served_judge(self) -> dict:
        """What the ``serve-judge`` server at ``judge`` serves (the result-changing part of its ``/info``)."""
        if getattr(self, "_served", None) is None:
            from rlhf_pairs.judges.remote import RemoteJudge, served_identity

            self._served = served_identity(RemoteJudge(self.judge).info)
        return self._served

    def load(self, device: str | torch.device | None = None) -> SupportsCompare:
        """The judge, loaded with :func:`rlhf_pairs.judges.load_judge` on ``device``."""
        from rlhf_pairs.judges.loading import load_judge

        return load_judge(
            self.judge_type,
            self.judge,
            device=device,
            dtype=self.judge_dtype,
            attn_implementation=self.judge_attn_implementation,
            temperature=self.judge_temperature,
            max_length=self.judge_max_length,
            batch_tokens=self.judge_batch_tokens,
            **({"pairrm_format": self.judge_pairrm_format} if self.judge_pairrm_format != "card" else {}),
            **self.generative_options(),
        )

    def generative_options(self) -> dict[str, Any]:
        """The options of judge_type llm (template, labels) and openai (also the model, concurrency, key variable)."""
        if self.judge_type not in GENERATIVE_JUDGE_TYPES:
            return {}
        options: dict[str, Any] = {"template": self.template_name(), "labels": self.label_pair()}
        if self.judge_type == "openai":
            options.update(
                model=self.judge_model, max_concurrency=self.judge_max_concurrency,
                on_unparsable=self.judge_on_unparsable, api_key_env=self.judge_api_key_env,
            )  # fmt: skip
        return options


@dataclass
class ServeJudgeConfig:
    """The ``serve-judge`` job (parsed with :class:`JudgeArguments`): where to listen, who may call, how to batch.

    See :mod:`rlhf_pairs.serving` for the endpoints, batching and several devices. Access: with ``api_key`` (default:
    the ``RLHF_PAIRS_JUDGE_API_KEY`` environment variable) every route but ``/health`` needs ``Authorization: Bearer
    <key>``; a ``host`` other than a loopback address (127.0.0.0/8, ::1, localhost) needs a key, or
    ``allow_unauthenticated`` for a closed network. The key is never shown (not in this dataclass's ``repr``).
    """

    host: str = field(
        default="127.0.0.1",
        metadata={"help": "Interface to listen on (0.0.0.0: every interface; any but loopback needs an API key)."},
    )
    port: int = field(default=8000, metadata={"help": "TCP port."})
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "help": "Key every request but /health must carry (Authorization: Bearer KEY). Default: the "
            "RLHF_PAIRS_JUDGE_API_KEY environment variable, the better place: a command line is visible to other "
            "users (ps)."
        },
    )
    allow_unauthenticated: bool = field(
        default=False,
        metadata={
            "help": "Listen on a non-loopback host without an API key: anyone who reaches the port can use the "
            "judge (a closed network only)."
        },
    )
    devices: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated devices, one judge copy and worker each (e.g. cuda:0,cuda:1); default: one."
        },
    )
    merge_requests: bool = field(
        default=True,
        metadata={"help": "Merge queued requests into one judge call (false: one call per request, bit-exact)."},
    )
    max_batch_rows: int = field(default=8192, metadata={"help": "Most rows one merged judge call takes."})
    max_body_mb: float = field(default=64.0, metadata={"help": "Largest request body accepted, in MiB (413 above)."})
    log_level: str = field(default="info", metadata={"help": "uvicorn's log level."})

    def __post_init__(self) -> None:
        import os

        from rlhf_pairs.judges.remote import API_KEY_ENV, check_api_key

        check_positive(self, "port", "max_batch_rows")
        if self.max_body_mb <= 0:
            raise ValueError(f"`max_body_mb` must be > 0, got {self.max_body_mb}")
        source = API_KEY_ENV if not self.api_key else "--api_key"
        self.api_key = self.api_key or os.environ.get(API_KEY_ENV) or None
        if self.api_key:
            check_api_key(self.api_key, source)
            if self.allow_unauthenticated:
                raise ValueError(
                    f"--allow_unauthenticated true contradicts the API key set (from {source}): unset one of them"
                )
        elif not self.allow_unauthenticated and not self.listens_on_loopback():
            raise ValueError(
                f"refusing to serve the judge on {self.host}, a non-loopback address, without an API key: set "
                f"{API_KEY_ENV} in the server's environment (or --api_key KEY, visible to other users in ps), and the "
                "same variable for the clients; or --allow_unauthenticated true on a closed network"
            )

    def listens_on_loopback(self) -> bool:
        """Whether ``host`` is a loopback address (127.0.0.0/8, ::1) or ``localhost``: reachable from this machine
        only."""
        import ipaddress

        host = self.host.strip().removeprefix("[").removesuffix("]")
        if host.lower() == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name other than localhost may resolve to anything
            return False

    def device_list(self) -> list[str | None]:
        """The devices to load a judge copy on (``[None]``: the default device)."""
        if not self.devices:
            return [None]
        devices: list[str | None] = [d.strip() for d in self.devices.split(",") if d.strip()]
        if not devices:
            raise ValueError(f"`devices` names no device: {self.devices!r}")
        return devices


@dataclass
class RankConfig:
    """The ``rank`` job (parsed with :class:`JudgeArguments`).

    Data: ``dataset_name``, ``dataset_config``, ``dataset_train_split``, ``output``, ``system_message``. Ranking:
    ``ranking_method``, ``seed``, ``find_worst``, ``complete_margins``, ``prob_matrix``. Execution: ``shard_size``,
    ``max_shards``, ``overwrite``.
    """

    dataset_name: str = field(
        metadata={"help": "Candidates: Hub name, local jsonl/json/parquet file, or a save_to_disk directory."}
    )
    output: str = field(metadata={"help": "Output file (.jsonl or .parquet); shards go to <output>.shards/."})
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset configuration name (datasets' `name`), for Hub or script datasets."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to rank."})
    ranking_method: str = field(default="knockout", metadata={"help": f"One of {METHODS}."})
    seed: int = field(default=0, metadata={"help": "Seeds the knockout brackets; results depend only on it."})
    find_worst: bool = field(default=True, metadata={"help": "Also find the worst candidate (knockout)."})
    shard_size: int = field(default=256, metadata={"help": "Prompts per shard (the unit of resume)."})
    max_shards: int | None = field(
        default=None, metadata={"help": "Stop after ranking this many new shards (time-boxed runs); re-run to go on."}
    )
    overwrite: bool = field(default=False, metadata={"help": "Discard finished shards made with other arguments."})
    system_message: str = field(
        default="merge",
        metadata={
            "help": f"Leading system turns of message prompts, for the judge: one of {SYSTEM_MESSAGE_MODES} (merge "
            "into the first user turn; error refuses the row). The output keeps the prompt as given."
        },
    )
    complete_margins: bool = field(
        default=False,
        metadata={
            "help": "Also judge best vs worst where the tournament did not pair them, so every ranked row has a "
            "margin (one more match for those rows, counted in num_comparisons)."
        },
    )
    prob_matrix: bool = field(
        default=False,
        metadata={
            "help": "Also write a prob_matrix column: per row P[i][j] = P(response i beats response j), diagonal 0.5 "
            "(SPPO's input, as uclaml/SPPO's compute_prob.py builds it). Needs ranking_method round_robin; a "
            "pointwise judge (reward model) gives sigmoid((s_i - s_j) / temperature) from its scores."
        },
    )

    def __post_init__(self) -> None:
        check_choice("ranking_method", self.ranking_method, METHODS)
        check_choice("system_message", self.system_message, SYSTEM_MESSAGE_MODES)
        check_positive(self, "shard_size", "max_shards")
        if self.prob_matrix and self.ranking_method != "round_robin":
            raise ValueError(
                f"`prob_matrix` needs every pair judged: ranking_method round_robin, got {self.ranking_method!r}"
            )
        if Path(self.output).suffix not in (".jsonl", ".parquet"):
            raise ValueError(f"`output` must end with .jsonl or .parquet, got {self.output!r}")


@dataclass
class EvalConfig:
    """The ``eval`` job (parsed with :class:`JudgeArguments`).

    Data: ``dataset_name``, ``dataset_config``, ``dataset_test_split``, ``max_examples``, ``system_message``.
    Scoring: ``ties``. Output: ``output_dir``, ``overwrite``. Execution: ``shard_size``.
    """

    output_dir: str = field(metadata={"help": "Directory for report.json, per_example.jsonl, report.md, sections.png."})
    dataset_name: str = field(
        default="allenai/reward-bench",
        metadata={"help": "Hub name, local jsonl/json/parquet file, or a save_to_disk directory (RewardBench format)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_test_split: str = field(
        default="filtered", metadata={"help": "Split to evaluate (RewardBench's: filtered)."}
    )
    max_examples: int | None = field(
        default=None, metadata={"help": "Evaluate only the first N rows (smoke runs; RewardBench is sorted by subset)."}
    )
    shard_size: int = field(default=128, metadata={"help": "Pairs per shard (the unit of work per process)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace the report already in `output_dir`."})
    ties: str = field(
        default="wrong",
        metadata={
            "help": "Credit for P(chosen) == 0.5: 'wrong' (RewardBench's pairwise pipelines, run_rm.py and "
            "slicpairpm.py) or 'half' (its generative script). The report names the rule."
        },
    )
    system_message: str = field(
        default="merge",
        metadata={
            "help": f"Leading system turns of message prompts, for the judge: one of {SYSTEM_MESSAGE_MODES} (merge "
            "into the first user turn; error refuses the row). The report counts the prompts changed."
        },
    )

    def __post_init__(self) -> None:
        check_positive(self, "shard_size", "max_examples")
        check_choice("ties", self.ties, ("wrong", "half"))
        check_choice("system_message", self.system_message, SYSTEM_MESSAGE_MODES)


@dataclass(kw_only=True)
class SamplingArguments:
    """How a job reads its prompts and samples ``num_candidates`` responses per prompt from a policy (``iterate`` and
    ``best-of-n`` share these fields, their names and their checks): ``prompt_column``, ``system_message``,
    ``num_candidates``, ``generation_temperature``, ``generation_top_p``, ``max_new_tokens``,
    ``generation_batch_size``, ``generation_backend``, ``vllm_*``."""

    prompt_column: str = field(default="prompt", metadata={"help": "Column holding the prompt (str or messages)."})
    system_message: str = field(
        default="merge",
        metadata={
            "help": f"Leading system turns of message prompts, for the judge: one of {SYSTEM_MESSAGE_MODES} (merge "
            "into the first user turn; error refuses the prompt). The policy always sees them."
        },
    )
    num_candidates: int = field(default=8, metadata={"help": "Candidates sampled per prompt (at least 2, to rank)."})
    generation_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (> 0)."})
    generation_top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling top-p."})
    max_new_tokens: int = field(default=2048, metadata={"help": "Maximum new tokens per candidate."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generate call (HF backend)."})
    generation_backend: str = field(default="hf", metadata={"help": f"One of {BACKENDS} (vllm: `vllm` extra)."})
    vllm_tensor_parallel_size: int = field(default=1, metadata={"help": "vLLM tensor parallel size."})
    vllm_gpu_memory_utilization: float = field(default=0.9, metadata={"help": "vLLM GPU memory share."})

    def __post_init__(self) -> None:
        check_choice("system_message", self.system_message, SYSTEM_MESSAGE_MODES)
        check_choice("generation_backend", self.generation_backend, BACKENDS)
        check_positive(self, "generation_batch_size", "max_new_tokens", "vllm_tensor_parallel_size")
        if self.num_candidates < 2:
            raise ValueError(f"`num_candidates` must be >= 2 to rank, got {self.num_candidates}")
        if self.generation_temperature <= 0:
            raise ValueError(
                f"`generation_temperature` must be > 0: greedy decoding ({self.generation_temperature}) gives "
                f"{self.num_candidates} identical candidates"
            )
        if not 0 < self.generation_top_p <= 1:
            raise ValueError(f"`generation_top_p` must be in (0, 1], got {self.generation_top_p}")


@dataclass
class IterateConfig(SamplingArguments):
    """The ``iterate`` job (parsed with :class:`JudgeArguments`, TRL's ``DPOConfig`` -- ``SFTConfig`` with
    ``mode: rejection_sampling``; with ``mode: sppo``, ``loss_type`` sppo or sppo_single -- and ``ModelConfig``).

    Data: ``dataset_name``, ``dataset_config``, ``dataset_train_split``, ``prompt_column``, ``system_message``,
    ``prompts_per_round``, ``eval_dataset_name``, ``dataset_test_split``, ``num_eval_prompts``. Generation:
    ``num_candidates``, ``generation_*``, ``max_new_tokens``, ``shard_size``, ``vllm_*``. Ranking: ``ranking_method``.
    Pairs and training:
    ``mode``, ``pair_strategy``, ``min_margin``, ``reference``. Evaluation: ``eval_max_new_tokens``,
    ``eval_temperature``. Control: ``rounds``, ``redo``. The output root, the seed and the training
    hyper-parameters come from the trainer config (``output_dir``, ``seed``, ``learning_rate``, ``beta``, ...); the
    initial policy and LoRA from ``ModelConfig`` (``model_name_or_path``, ``dtype``, ``use_peft``, ``lora_*``).
    """

    dataset_name: str = field(
        metadata={
            "help": "Prompts: Hub name, local jsonl/json/parquet file or save_to_disk dir; with '{round}' in it, "
            "one source per round (e.g. RLHFlow/iterative-prompt-v1-iter{round}-20K)."
        }
    )
    rounds: int = field(default=3, metadata={"help": "Number of rounds."})
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset configuration name of `dataset_name` (Hub)."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split of `dataset_name`."})
    prompts_per_round: int | None = field(
        default=None,
        metadata={
            "help": "Round k uses the k-th slice of this many prompts (RLHFlow: a fresh slice per round); "
            "None: every round uses all prompts."
        },
    )
    eval_dataset_name: str | None = field(default=None, metadata={"help": "Held-out prompts for the win rate."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split of `eval_dataset_name`."})
    num_eval_prompts: int = field(
        default=0,
        metadata={
            "help": "Without `eval_dataset_name`: hold out this many prompts from the end of `dataset_name` for the "
            "win rate (0 and no eval_dataset_name: no eval stage). With it: use at most this many (0: all)."
        },
    )
    shard_size: int = field(default=64, metadata={"help": "Prompts per generation/ranking shard (unit of resume)."})
    ranking_method: str = field(default="knockout", metadata={"help": f"One of {METHODS}."})
    mode: str = field(
        default="dpo",
        metadata={
            "help": f"One of {MODES}; rejection_sampling trains with TRL's SFTConfig fields instead of DPOConfig; "
            "sppo (uclaml/SPPO): round-robin P matrix, chosen/rejected with win-rate targets, DPOConfig with "
            "loss_type sppo or sppo_single (needs ranking_method round_robin)."
        },
    )
    pair_strategy: str = field(default="max_min", metadata={"help": f"One of {PAIR_STRATEGIES}."})
    min_margin: float | None = field(
        default=None, metadata={"help": "Drop prompts whose P(best beats worst) is below this (None: keep all)."}
    )
    reference: str = field(
        default="initial",
        metadata={
            "help": f"DPO reference model, one of {REFERENCES}: the initial policy (RLHFlow) or the "
            "policy the round starts from."
        },
    )
    eval_max_new_tokens: int | None = field(default=None, metadata={"help": "Eval tokens (None: max_new_tokens)."})
    eval_temperature: float = field(default=0.0, metadata={"help": "Eval sampling temperature (0: greedy)."})
    redo: bool = field(
        default=False, metadata={"help": "Recompute a finished stage whose config changed, and every later stage."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, allowed in (
            ("ranking_method", METHODS),
            ("mode", MODES),
            ("pair_strategy", PAIR_STRATEGIES),
            ("reference", REFERENCES),
        ):
            check_choice(name, getattr(self, name), allowed)
        check_positive(self, "rounds", "shard_size", "eval_max_new_tokens", "prompts_per_round")
        if self.mode == "sppo" and self.ranking_method != "round_robin":
            raise ValueError(
                "`mode: sppo` needs the full P matrix of every prompt: set `ranking_method: round_robin` (got "
                f"{self.ranking_method!r})"
            )
        if self.mode == "sppo" and self.pair_strategy != "max_min":
            raise ValueError(
                "`mode: sppo` picks chosen/rejected by SPPO's own rule (max and min score): `pair_strategy` must "
                f"stay max_min, got {self.pair_strategy!r}"
            )
        if self.num_eval_prompts < 0:
            raise ValueError(f"`num_eval_prompts` must be >= 0, got {self.num_eval_prompts}")


@dataclass
class OnlineConfig:
    """The online training jobs, ``online-dpo`` and ``grpo`` (parsed with :class:`JudgeArguments`, TRL's
    ``OnlineDPOConfig`` / ``GRPOConfig`` and ``ModelConfig``).

    Data: ``dataset_name``, ``dataset_config``, ``dataset_train_split``, ``dataset_test_split`` (a ``prompt``
    column: strings or chat messages). Reward: ``ranking_method``, ``ranking_seed``, ``system_message``. Win rate:
    ``win_rate_prompts``, ``win_rate_steps``, ``win_rate_max_new_tokens``.
    """

    dataset_name: str = field(
        metadata={"help": "Prompts: a Hub dataset, a local jsonl/json/parquet file, or a save_to_disk directory."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name (Hub)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test",
        metadata={"help": "Split the win-rate prompts come from; if missing, they are held out of the train split."},
    )
    ranking_method: str = field(
        default="round_robin",
        metadata={
            "help": f"GRPO group scoring, one of {METHODS}: round_robin = mean win probability in the group; "
            "knockout = 1 best, 0 worst, 0.5 others. Online DPO always uses P(this beats the other)."
        },
    )
    ranking_seed: int = field(default=0, metadata={"help": "Knockout bracket seed."})
    system_message: str = field(
        default="merge",
        metadata={
            "help": f"Leading system turns of message prompts, for the judge: one of {SYSTEM_MESSAGE_MODES} (merge "
            "into the first user turn; error refuses the prompt). The policy always sees them."
        },
    )
    win_rate_prompts: int = field(
        default=0, metadata={"help": "Prompts for the win-rate callback (vs. the initial policy); 0 disables it."}
    )
    win_rate_steps: int | None = field(
        default=None, metadata={"help": "Steps between win-rate evaluations (default: the trainer's eval_steps)."}
    )
    win_rate_max_new_tokens: int | None = field(
        default=None, metadata={"help": "Tokens per win-rate completion (default: the trainer's completion length)."}
    )

    def __post_init__(self) -> None:
        check_choice("ranking_method", self.ranking_method, METHODS)
        check_choice("system_message", self.system_message, SYSTEM_MESSAGE_MODES)
        if self.win_rate_prompts < 0:
            raise ValueError(f"`win_rate_prompts` must be >= 0, got {self.win_rate_prompts}")
        check_positive(self, "win_rate_steps", "win_rate_max_new_tokens")


@dataclass
class PairPMConfig:
    """The ``train-pm`` job (parsed with TRL's ``SFTConfig`` and ``ModelConfig``).

    Data: ``dataset_name``, ``dataset_config``, ``dataset_train_split``, ``dataset_test_split``, ``eval_size``,
    ``max_train_pairs``, ``max_eval_pairs``. Comparisons: ``orders``, ``label_format``, ``loss_on_eot``,
    ``eot_token``, ``overlong``. Saving: ``merge_lora``. Packing is TRL's (``packing``, ``max_length`` and the batch
    size of ``SFTConfig``).
    """

    dataset_name: str = field(
        default="RLHFlow/pair_preference_model_dataset",
        metadata={
            "help": "Hub name, local jsonl/json/parquet file or save_to_disk directory: RLHFlow `messages` rows "
            "or prompt/chosen/rejected pairs."
        },
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None,
        metadata={"help": "Held-out split for evaluation; if unset, `eval_size` pairs of the train split."},
    )
    eval_size: float = field(
        default=0.0,
        metadata={
            "help": "Pairs held out of the train split when there is no test split (fraction if < 1). "
            "Split by pair, so both orders of a pair stay on one side."
        },
    )
    max_train_pairs: int | None = field(default=None, metadata={"help": "Use only the first N training pairs."})
    max_eval_pairs: int | None = field(default=None, metadata={"help": "Evaluate on at most N held-out pairs."})
    orders: str = field(
        default="both",
        metadata={
            "help": f"One of {ORDERS}: each training pair in both A/B orders, one order drawn with `seed`, or each "
            "RLHFlow comparison row exactly in the order the dataset holds it (`as_is`: what RLHFlow's model saw). "
            "Evaluation always uses both orders."
        },
    )
    label_format: str = field(
        default="judge",
        metadata={
            "help": f"One of {LABEL_FORMATS}: `judge` trains the label right after the judge's input (the position "
            "the judge reads); `rlhflow` reproduces RLHFlow's axolotl sequences (assistant header, then label and "
            "end of turn, loss on the assistant turn as axolotl masks it)."
        },
    )
    loss_on_eot: bool = field(
        default=False,
        metadata={"help": "`judge` format: also train on an end-of-turn token after the label (default: label only)."},
    )
    eot_token: str | None = field(
        default=None, metadata={"help": "End-of-turn token for `loss_on_eot` (default: <|eot_id|> if known, else EOS)."}
    )
    overlong: str = field(
        default="truncate",
        metadata={
            "help": f"One of {OVERLONG}: a training comparison longer than `max_length` is truncated like the judge "
            "truncates (oldest context first) or dropped (axolotl's rule); the summary counts them. Held-out "
            "comparisons are always truncated, as the judge reads them."
        },
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "With use_peft: save the merged model in output_dir (adapter in adapter/)."}
    )

    def __post_init__(self) -> None:
        check_choice("orders", self.orders, ORDERS)
        check_choice("label_format", self.label_format, LABEL_FORMATS)
        check_choice("overlong", self.overlong, OVERLONG)
        if self.label_format == "rlhflow" and self.loss_on_eot:
            raise ValueError(
                "`loss_on_eot` is for `label_format: judge`; `rlhflow` already trains the end of turn (axolotl's mask)"
            )
        if self.eval_size < 0:
            raise ValueError(f"`eval_size` must be >= 0, got {self.eval_size}")
        check_positive(self, "max_train_pairs", "max_eval_pairs")


@dataclass
class PairRMTrainConfig:
    """The ``train-pairrm`` job (parsed with transformers' ``TrainingArguments`` and TRL's ``ModelConfig``: the
    PairRM checkpoint is ``model_name_or_path``, default ``llm-blender/PairRM-hf``, loaded in ``dtype``). Data: ``dataset_name``, ``dataset_config``, ``dataset_train_split``,
    ``dataset_test_split``, ``eval_size``, ``max_train_pairs``, ``max_eval_pairs``. Budgets: ``source_max_length``,
    ``max_length`` (the card's 1224 and 2048). Objective: ``loss_type``, ``pairs_per_source``.
    """

    dataset_name: str = field(
        metadata={
            "help": "Hub name or local file/directory with prompt/chosen/rejected pairs, or prompt/responses/rewards "
            "candidate lists (the rank job's output)."
        }
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str | None = field(
        default=None, metadata={"help": "Held-out split; if unset, `eval_size` pairs of the train split."}
    )
    eval_size: float = field(
        default=0.0,
        metadata={"help": "Pairs held out of the train split when there is no test split (fraction if < 1)."},
    )
    max_train_pairs: int | None = field(
        default=None, metadata={"help": "Use only the first N training pairs (candidate lists: N prompts)."}
    )
    max_eval_pairs: int | None = field(
        default=None, metadata={"help": "Evaluate on at most N held-out pairs (candidate lists: N prompts)."}
    )
    source_max_length: int = field(default=SOURCE_MAX_LENGTH, metadata={"help": "Source token budget (card: 1224)."})
    max_length: int = field(
        default=MAX_LENGTH,
        metadata={
            "help": f"Total budget; each candidate gets (max_length - source) // 2 (card: 2048 = "
            f"{SOURCE_MAX_LENGTH} + 2 x {CANDIDATE_MAX_LENGTH})."
        },
    )
    loss_type: str = field(
        default="both_orders",
        metadata={
            "help": f"One of {PAIRRM_LOSSES}: `both_orders` scores each pair in both orders and trains "
            "-log sigmoid(f(c, r) - f(r, c)), the quantity the judge reads; `instructgpt` is llm-blender's, "
            "-log sigmoid(sign(score_a - score_b) * f(a, b)) on each pair in one random order (drawn with `seed`)."
        },
    )
    pairs_per_source: int = field(
        default=5,
        metadata={
            "help": "Candidate lists: at most this many pairs per prompt, drawn with `seed` from its distinct "
            "candidates, ties skipped (llm-blender's `all_pair` sampling, num_pos = num_neg = 5). A chosen/rejected "
            "row is one pair."
        },
    )

    def __post_init__(self) -> None:
        if self.eval_size < 0:
            raise ValueError(f"`eval_size` must be >= 0, got {self.eval_size}")
        check_choice("loss_type", self.loss_type, PAIRRM_LOSSES)
        check_positive(self, "max_train_pairs", "max_eval_pairs", "source_max_length", "pairs_per_source")
        if self.max_length <= self.source_max_length:
            raise ValueError(
                f"`max_length` ({self.max_length}) must exceed `source_max_length` ({self.source_max_length})"
            )


@dataclass
class BestOfNConfig(SamplingArguments):
    """The ``best-of-n`` job (parsed with :class:`JudgeArguments` and TRL's ``ModelConfig``, which names the policy:
    ``model_name_or_path``, ``model_revision``, ``dtype``, ``attn_implementation``).

    Data: ``dataset_name``, ``dataset_config``, ``dataset_train_split``, ``prompt_column``, ``system_message``.
    Generation: ``num_candidates``, ``max_new_tokens``, ``generation_*``, ``vllm_*``, ``seed``. Ranking:
    ``ranking_method``, ``find_worst``. Output and execution: ``output``, ``shard_size``, ``max_shards``,
    ``overwrite``. Differs from TRL's former ``BestOfNSampler``: the candidates are ranked by a judge (a reward
    model by its scores, a pair judge by a knockout), not by a reward pipeline's scores; ``find_worst`` is off by
    default (the rank job's is on), since only the best is kept.
    """

    dataset_name: str = field(
        metadata={"help": "Prompts: Hub name, local jsonl/json/parquet file, or a save_to_disk directory."}
    )
    output: str = field(metadata={"help": "Output file (.jsonl), one row per prompt; work files go to <output>.work/."})
    dataset_config: str | None = field(
        default=None, metadata={"help": "Dataset configuration name (datasets' `name`), for Hub or script datasets."}
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split of `dataset_name`."})
    seed: int = field(
        default=0,
        metadata={"help": "Seeds the sampling (per chunk of prompts) and the knockout brackets; results depend on it."},
    )
    ranking_method: str = field(
        default="knockout",
        metadata={"help": f"One of {METHODS}, for a pair judge; a reward model ranks by its scores whatever this is."},
    )
    find_worst: bool = field(
        default=False,
        metadata={
            "help": "Also find the worst candidate and, where best and worst meet, the margin P(best beats worst) "
            "(knockout: ceil(n/2) - 1 more matches). Off by default, unlike the rank job: best-of-n keeps the best."
        },
    )
    shard_size: int = field(default=64, metadata={"help": "Prompts per generation/ranking shard (unit of resume)."})
    max_shards: int | None = field(
        default=None,
        metadata={
            "help": "Time-boxed runs: stop after this many new shards, generation shards first (all processes "
            "together), then ranking shards (per process, as in the rank job); re-run to go on."
        },
    )
    overwrite: bool = field(
        default=False, metadata={"help": "Discard finished work in <output>.work/ made with other arguments."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("ranking_method", self.ranking_method, METHODS)
        check_positive(self, "shard_size", "max_shards")
        if Path(self.output).suffix != ".jsonl":
            raise ValueError(f"`output` must end with .jsonl, got {self.output!r}")
