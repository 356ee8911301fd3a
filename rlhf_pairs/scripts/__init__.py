"""One module per job with TRL's script contract: ``make_parser(subparsers=None, prog=None)`` and ``main(...)`` on the
parsed dataclasses. ``rlhf-pairs <job>``, ``python -m rlhf_pairs.scripts.<job>`` and ``accelerate launch
scripts/<job>.py`` reach the same ``main``; nothing in the library imports a script.

Recipes ship inside the package (``rlhf_pairs/recipes/<job>/*.yaml``, launcher configs in
``rlhf_pairs/recipes/accelerate/``), so ``--config`` takes a path or a shipped recipe's name.
"""

from __future__ import annotations

import logging
import sys
from importlib import resources
from pathlib import Path

RECIPES_PACKAGE = "rlhf_pairs"
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
    """``argv`` with the value of ``--config`` (``--config X`` or ``--config=X``) resolved by :func:`recipe_path`."""
    argv = list(argv)
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            argv[i + 1] = recipe_path(argv[i + 1], folder)
        elif arg.startswith("--config="):
            argv[i] = "--config=" + recipe_path(arg.split("=", 1)[1], folder)
    return argv


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
        path = (
            out[i + 1]
            if arg == "--config" and i + 1 < len(out)
            else arg.partition("=")[2]
            if arg.startswith("--config=")
            else None
        )
        if path and Path(path).is_file():
            values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            if isinstance(values, dict) and set(values) & set(renamed):
                config = {(new_name(k) if k in renamed else k): v for k, v in values.items()}
    return out, config


def parse(module, argv: list[str] | None = None) -> tuple:
    """Parse ``argv`` (default ``sys.argv[1:]``) with the script ``module``'s parser: a ``TrlParser`` reads
    ``--config`` (a path or a shipped recipe's name) as defaults that flags override. Option names the job renamed
    (``module.RENAMED``: old -> new) still work, with a ``FutureWarning``. Returns what ``main`` takes."""
    import tempfile

    import yaml
    from trl import TrlParser

    argv = resolve_config_argument(sys.argv[1:] if argv is None else argv, module.RECIPES)
    argv, renamed_config = rename_deprecated(argv, getattr(module, "RENAMED", {}))
    with tempfile.TemporaryDirectory() as tmp:
        if renamed_config is not None:  # the recipe with its deprecated keys renamed, parsed in its place
            config = Path(tmp) / "config.yaml"
            config.write_text(yaml.safe_dump(renamed_config), encoding="utf-8")
            argv = [a for a in argv if not a.startswith("--config=")]
            if "--config" in argv:
                i = argv.index("--config")
                del argv[i : i + 2]
            argv = ["--config", str(config), *argv]
        parser = module.make_parser(argv=argv) if getattr(module, "PARSER_READS_ARGV", False) else module.make_parser()
        if isinstance(parser, TrlParser):
            return tuple(parser.parse_args_and_config(args=argv))
        return (parser.parse_args(argv),)


def run(module, argv: list[str] | None = None):
    """Parse ``argv`` for the script ``module`` and run its ``main``; returns what ``main`` returns."""
    args = parse(module, argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return module.main(*args)
