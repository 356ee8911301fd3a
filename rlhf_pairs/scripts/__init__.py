"""One module per job with TRL's script contract: ``make_parser(subparsers=None, prog=None)`` and ``main(...)`` on the
parsed dataclasses. ``rlhf-pairs <job>``, ``python -m rlhf_pairs.scripts.<job>`` and ``accelerate launch
scripts/<job>.py`` reach the same ``main``; nothing in the library imports a script.

A job parsed by a ``TrlParser`` names its dataclasses at module level: ``DATACLASSES`` (this package's, from
``rlhf_pairs.configs``) and ``LIBRARY_CONFIGS`` (the names of TRL's or transformers' configs its parser adds). A
script imports torch, transformers, TRL and accelerate only inside its functions, so that ``rlhf-pairs <job> --help``
(:func:`short_help`) is instant.

Recipes ship inside the package (``rlhf_pairs/recipes/<job>/*.yaml``, launcher configs in
``rlhf_pairs/recipes/accelerate/``), so ``--config`` takes a path or a shipped recipe's name.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import NoReturn

RECIPES_PACKAGE = "rlhf_pairs"
# The jobs of `rlhf-pairs <job>` (`rlhf_pairs.cli`): job -> (script module, one-line help). Modules by name, so
# that listing the jobs imports none of them.
JOBS = {
    "demo": (
        "rlhf_pairs.scripts.demo",
        "a round of iterative DPO on the embedded SmolLM2: generate, rank, pairs, DPO, win rate (CPU)",
    ),
    "rank": ("rlhf_pairs.scripts.rank", "rank candidate responses per prompt with a pair judge (accelerate-aware)"),
    "iterate": ("rlhf_pairs.scripts.iterate", "iterative DPO / rejection sampling with a pair judge, resumable"),
    "best-of-n": (
        "rlhf_pairs.scripts.best_of_n",
        "best of n samples per prompt, ranked by a reward model or a pair judge (accelerate-aware, resumable)",
    ),
    "eval": ("rlhf_pairs.scripts.eval_judge", "judge accuracy and position/length bias on RewardBench-format pairs"),
    "online-dpo": ("rlhf_pairs.scripts.online_dpo", "online DPO (TRL) with a pair judge as the reward"),
    "grpo": ("rlhf_pairs.scripts.grpo", "GRPO (TRL) with pair-judge tournament scores as the reward"),
    "train-pm": ("rlhf_pairs.scripts.train_pair_pm", "train a pair preference LM (RLHFlow recipe, TRL SFTTrainer)"),
    "train-pairrm": ("rlhf_pairs.scripts.train_pairrm", "fine-tune a PairRM pair ranker (logistic loss, both orders)"),
    "serve-judge": (
        "rlhf_pairs.scripts.serve_judge",
        "serve a judge over HTTP to every process and node (judge_type remote)",
    ),
    "tiny-models": ("rlhf_pairs.scripts.tiny_models", "tiny random models and a sample input per job, to try offline"),
}
# Judge options renamed to JudgeArguments' names in the rank and eval jobs (deprecated aliases for one release).
RENAMED_JUDGE_OPTIONS = {
    "dtype": "judge_dtype",
    "attn_implementation": "judge_attn_implementation",
    "temperature": "judge_temperature",
    "max_length": "judge_max_length",
    "batch_tokens": "judge_batch_tokens",
}


def recipes_dir() -> Path:
    """The shipped recipes: ``rlhf_pairs/recipes`` inside the installed package."""
    return Path(str(resources.files(RECIPES_PACKAGE).joinpath("recipes")))


def shipped_recipes(folder: str) -> list[str]:
    """Names of the shipped recipes of one job folder (e.g. ``rank``), without ``.yaml``."""
    return sorted(p.stem for p in (recipes_dir() / folder).glob("*.yaml"))


def recipe_path(value: str, folder: str) -> str:
    """``value`` when it is a file; else the shipped recipe it names: ``<folder>/<value>.yaml`` (the job's own folder)
    or ``<value>.yaml`` under the recipes root (e.g. ``rank/pair_lm_knockout``).

    Raises ``ValueError`` naming the shipped recipes when neither exists."""
    if Path(value).is_file():
        return value
    name = value.removesuffix(".yaml")
    for candidate in (recipes_dir() / folder / f"{name}.yaml", recipes_dir() / f"{name}.yaml"):
        if candidate.is_file():
            return str(candidate)
    raise ValueError(
        f"--config {value!r} is neither a file nor a shipped recipe of this job; shipped {folder!r} recipes: "
        f"{', '.join(shipped_recipes(folder)) or 'none'}"
    )


def accelerate_config_path(value: str) -> str:
    """``value`` when it is a file; else the shipped launcher config it names (``cpu_2proc``, ``multi_gpu``,
    ``zero2``, ``zero3``). Raises ``ValueError`` listing them otherwise."""
    try:
        return recipe_path(value, "accelerate")
    except ValueError:
        names = ", ".join(shipped_recipes("accelerate"))
        raise ValueError(f"--accelerate_config {value!r} is neither a file nor a shipped config ({names})") from None


def resolve_config_argument(argv: list[str], folder: str) -> list[str]:
    """``argv`` with ``--config X`` (or ``--config=X``) as ``--config <path>``, the path resolved by
    :func:`recipe_path` (TRL's parser reads only the two-token form)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config" and i + 1 < len(argv):
            out += ["--config", recipe_path(argv[i + 1], folder)]
            i += 2
            continue
        if arg.startswith("--config="):
            out += ["--config", recipe_path(arg.split("=", 1)[1], folder)]
        else:
            out.append(arg)
        i += 1
    return out


def rename_deprecated(argv: list[str], renamed: dict[str, str]) -> tuple[list[str], dict | None]:
    """``argv`` with deprecated option names (``renamed``: old -> new) replaced, and the ``--config`` YAML's keys
    renamed the same way (``None`` when it needs no change). Each rename warns once with a ``FutureWarning``."""
    import warnings

    import yaml

    def new_name(old: str) -> str:
        warnings.warn(
            f"`{old}` is deprecated and will be removed in the next release: use `{renamed[old]}`",
            FutureWarning,
            stacklevel=4,
        )
        return renamed[old]

    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if name.startswith("--") and name[2:] in renamed:
            arg = f"--{new_name(name[2:])}{sep}{value}"
        out.append(arg)
    config = None
    for i, arg in enumerate(out):
        path = out[i + 1] if arg == "--config" and i + 1 < len(out) else None
        if path and Path(path).is_file():
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            if isinstance(values, dict) and set(values) & set(renamed):
                config = {(new_name(k) if k in renamed else k): v for k, v in values.items()}
    return out, config


def parse(module, argv: list[str] | None = None) -> tuple:
    """Parse ``argv`` (default ``sys.argv[1:]``) with the script ``module``'s parser: a ``TrlParser`` reads
    ``--config`` (a path or a shipped recipe's name) as defaults that flags override. Option names the job renamed
    (``module.RENAMED``: old -> new) still work, with a ``FutureWarning``. Returns what ``main`` takes.

    ``--help`` prints :func:`short_help` before any parser is built (no TRL, torch or transformers to import);
    ``--help-all`` is the parser's own help, every option."""
    import tempfile

    import yaml

    argv = resolve_config_argument(sys.argv[1:] if argv is None else argv, module.RECIPES)
    argv, renamed_config = rename_deprecated(argv, getattr(module, "RENAMED", {}))
    if hasattr(module, "DATACLASSES") and ("-h" in argv or "--help" in argv):
        print(short_help(module))
        raise SystemExit(0)
    with tempfile.TemporaryDirectory() as tmp:
        if renamed_config is not None:  # the recipe with its deprecated keys renamed, parsed in its place
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump(renamed_config), encoding="utf-8")
            if "--config" in argv:
                i = argv.index("--config")
                del argv[i : i + 2]
            argv = ["--config", str(config), *argv]
        kwargs = {"argv": argv} if getattr(module, "PARSER_READS_ARGV", False) else {}
        parser = module.make_parser(prog=f"rlhf-pairs {job_name(module)}", **kwargs)
        short_errors(parser, module)
        argv = ["--help" if a == "--help-all" else a for a in argv]
        if hasattr(parser, "parse_args_and_config"):  # a TrlParser
            with warnings.catch_warnings():
                if not _mentions(argv, "gradient_checkpointing"):
                    # TRL 1.16's configs default `gradient_checkpointing=True`, which transformers >= 5.23 reports as
                    # deprecated (renamed `activation_checkpointing`) on every parse: noise unless the user wrote it.
                    warnings.filterwarnings("ignore", r"`gradient_checkpointing` is deprecated", FutureWarning)
                *parsed, from_config, from_flags = parser.parse_args_and_config(
                    args=argv, return_remaining_strings=True, separate_remaining_strings=True
                )
            if from_flags:  # as argparse reports them (HfArgumentParser raises a ValueError)
                parser.error(f"unrecognized arguments: {' '.join(from_flags)}")
            if from_config:
                unknown = ", ".join(key.removeprefix("--") for key in from_config[::2])
                raise ValueError(f"--config: unknown keys {unknown}: no option of this job has those names")
            return tuple(parsed)
        return (parser.parse_args(argv),)


def _mentions(argv: list[str], key: str) -> bool:
    """Whether the command line or its ``--config`` recipe sets ``key``."""
    if any(arg == f"--{key}" or arg.startswith(f"--{key}=") for arg in argv):
        return True
    if "--config" in argv and argv.index("--config") + 1 < len(argv):
        recipe = Path(argv[argv.index("--config") + 1])
        return recipe.is_file() and re.search(rf"(?m)^{key}\s*:", recipe.read_text(encoding="utf-8")) is not None
    return False


def job_name(module) -> str:
    """The ``rlhf-pairs`` job whose script ``module`` is (e.g. ``rank``)."""
    name = module.__name__
    if name == "__main__":  # run as a file (accelerate launch rlhf_pairs/scripts/<job>.py)
        name = f"{__name__}.{Path(module.__file__).stem}"
    return next((job for job, (path, _) in JOBS.items() if path == name), name.rsplit(".", 1)[-1])


def short_usage(module) -> str:
    """The job's usage in one line (argparse's own, for a parser holding a trainer config, runs to 100-200 lines)."""
    config = "[--config RECIPE] " if hasattr(module, "DATACLASSES") else ""
    return f"usage: rlhf-pairs {job_name(module)} {config}[--OPTION VALUE ...]"


def short_errors(parser, module) -> None:
    """Make ``parser`` report a bad flag, flag value or missing argument as the short usage line, the error and where
    the help is, exit status 2 (argparse prints its whole usage instead: 186 lines for ``iterate``)."""
    job = job_name(module)

    def error(message: str):
        sys.stderr.write(f"{short_usage(module)}\nrlhf-pairs {job}: error: {message}\nsee `rlhf-pairs {job} --help`\n")
        raise SystemExit(2)

    parser.error = error


def short_help(module) -> str:
    """The job's own options, one group per dataclass of this package (``module.DATACLASSES``), with the library
    configs (``module.LIBRARY_CONFIGS``: TRL's trainer config, ``ModelConfig``) behind a pointer to ``--help-all``.
    Built without the job's parser, so that it imports no TRL, torch or transformers."""
    import dataclasses
    import re

    def plain(text: str) -> str:  # docstring markup out: ":class:`X`" -> "X", "``x``" -> "x"
        return re.sub(r":\w+:`~?([^`]*)`", r"\1", text).replace("``", "")

    job = job_name(module)
    lines = [short_usage(module), ""]
    doc = plain(module.__doc__ or "").strip().splitlines()
    if doc:
        lines += [doc[0], ""]
    lines += [f"--config RECIPE  a YAML file, or a shipped recipe: {', '.join(shipped_recipes(module.RECIPES)) or '-'}"]
    for cls in module.DATACLASSES:
        summary = " ".join(plain(cls.__doc__ or "").strip().split("\n\n")[0].split())  # the first paragraph
        lines += ["", f"{cls.__name__}: {summary}"]
        own = set(getattr(cls, "__annotations__", {}))  # the class's own fields first, then the shared ones
        for f in sorted(dataclasses.fields(cls), key=lambda f: f.name not in own):
            default = f.default if f.default is not dataclasses.MISSING else "required"
            lines.append(f"  --{f.name} (default: {default})")
            lines.append(f"      {f.metadata.get('help', '')}")
    library = getattr(module, "LIBRARY_CONFIGS", ())
    if library:
        lines += ["", f"plus the options of {', '.join(library)}: rlhf-pairs {job} --help-all"]
    lines += [
        "",
        "Flags override the recipe's values. Launch on several processes: --accelerate_config NAME --num_processes N.",
    ]
    return "\n".join(lines)


def run(module, argv: list[str] | None = None):
    """Parse ``argv`` for the script ``module`` and run its ``main``; returns what ``main`` returns."""
    args = parse(module, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from rlhf_pairs.utils.verbosity import setup_console  # after parsing: --help imports no transformers

    setup_console()
    return module.main(*args)


DEBUG_ENV = "RLHF_PAIRS_DEBUG"


def report_user_errors(fn, prog: str) -> int:
    """Run ``fn()`` as a command: a user error (a bad input, file, flag value or configuration, another run on the
    output) prints one line ``<prog>: error: ...`` and returns 1, an interrupt returns 130; with
    ``RLHF_PAIRS_DEBUG=1`` they raise with their traceback. Bugs (any other exception) always raise."""
    from rlhf_pairs.utils.locking import OutputLocked

    try:
        fn()
        return 0
    except KeyboardInterrupt as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{prog}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    except (ValueError, OSError, OutputLocked) as err:
        if os.environ.get(DEBUG_ENV):
            raise
        print(f"{prog}: error: {err}\n(set {DEBUG_ENV}=1 to see the traceback)", file=sys.stderr)
        return 1


def run_command(module, argv: list[str] | None = None) -> int:
    """:func:`run` as a command (``python scripts/<job>.py``, ``accelerate launch``): user errors as one line."""
    return report_user_errors(lambda: run(module, argv), f"rlhf-pairs {job_name(module)}")


def command_main(module) -> NoReturn:
    """The ``__main__`` of a job's script: :func:`run_command` as this process's command (:func:`exit_process`)."""
    exit_process(lambda: run_command(module))


def exit_process(command: Callable[[], int]) -> NoReturn:
    """Run ``command`` as this process's command and exit with its status. A launched worker (``accelerate
    launch``/``torchrun``) whose command succeeded exits without the interpreter's teardown, where gloo can abort a
    worker that finished (:func:`~rlhf_pairs.utils.distributed.exit_worker`). A failed one exits as usual: the launch
    fails either way, and torchrun names as the root cause the rank that failed first, which a failing rank's quick
    exit would blur (its peers fail at once on the closed connection, within the same second)."""
    from rlhf_pairs.utils.distributed import exit_worker, launched_worker

    status = command()
    if status == 0 and launched_worker():
        exit_worker(status)
    raise SystemExit(status)
