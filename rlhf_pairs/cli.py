"""The ``rlhf-pairs`` console command: ``rlhf-pairs <job> [args]`` runs the job's script (``rlhf_pairs/scripts``).

- ``--config`` takes a recipe file or the name of a shipped recipe (``rlhf-pairs rank --config pair_lm_knockout``).
- Without launcher flags the job runs in this process. With ``--accelerate_config NAME_OR_PATH`` (a shipped
  launcher config: ``cpu_2proc``, ``multi_gpu``, ``zero2``, ``zero3``) or any other ``accelerate launch`` flag
  (``--num_processes 8``, ``--num_machines``, ...), the command starts ``accelerate launch`` on the job's script, as
  ``trl <command>`` does: the job's own arguments are passed through unchanged.
"""

from __future__ import annotations

import importlib
import sys
from typing import NoReturn

from rlhf_pairs import __version__

# JOBS (the job table) lives with the scripts, below this module, and stays importable from here.
from rlhf_pairs.scripts import JOBS, accelerate_config_path, exit_process, report_user_errors, run


def usage() -> str:
    jobs = "\n".join(f"  {name:<14}{help_text}" for name, (_, help_text) in JOBS.items())
    return (
        "usage: rlhf-pairs <job> [--help] [--config RECIPE] [--accelerate_config NAME --num_processes N] [args]\n\n"
        f"jobs:\n{jobs}\n"
    )


def launcher_flags() -> set[str]:
    """The option strings of ``accelerate launch`` (plus ``--accelerate_config``)."""
    from accelerate.commands.launch import launch_command_parser

    flags = {"--accelerate_config"}
    for action in launch_command_parser()._actions:
        flags.update(s for s in action.option_strings if s.startswith("--") and s != "--help")
    return flags


def split_launch_args(argv: list[str], job_flags: set[str]) -> tuple[list[str], list[str]]:
    """(accelerate launch arguments, job arguments) of ``argv``: an option belongs to the launcher when
    ``accelerate launch`` knows it and the job does not; its value (the next token unless it starts with ``--``)
    goes with it."""
    launch, job = [], []
    flags = launcher_flags() - job_flags
    i = 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        target = launch if name in flags else job
        target.append(argv[i])
        if "=" not in argv[i] and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            target.append(argv[i + 1])
            i += 1
        i += 1
    return launch, job


def job_flags(module) -> set[str]:
    """The option strings the job's own parser knows."""
    parser = module.make_parser(prog="rlhf-pairs")
    return {s for action in parser._actions for s in action.option_strings}


def launch(module, launch_args: list[str], job_args: list[str]) -> int:
    """``accelerate launch <launch_args> <module's file> <job_args>``, ``--accelerate_config`` resolved to a
    ``--config_file``; returns the launcher's exit status."""
    import subprocess

    args = list(launch_args)
    if "--accelerate_config" in args:
        i = args.index("--accelerate_config")
        if i + 1 >= len(args):
            raise ValueError("--accelerate_config needs a value: a shipped config name or a file")
        args[i : i + 2] = ["--config_file", accelerate_config_path(args[i + 1])]
    for i, arg in enumerate(args):
        if arg.startswith("--accelerate_config="):
            args[i : i + 1] = ["--config_file", accelerate_config_path(arg.split("=", 1)[1])]
    command = [sys.executable, "-m", "accelerate.commands.launch", *args, module.__file__, *job_args]
    print("rlhf-pairs: " + " ".join(command), file=sys.stderr)
    return subprocess.call(command)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"rlhf-pairs {__version__}")
        return 0
    if argv[0] not in JOBS:
        print(f"rlhf-pairs: unknown job {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(JOBS[argv[0]][0])
    args = argv[1:]
    if "-h" in args or "--help" in args:  # the short help: no parser, launcher or torch to load
        run(module, args)
        return 0
    launcher, job_args = split_launch_args(args, job_flags(module))
    if launcher:
        return launch(module, launcher, job_args)
    run(module, job_args)
    return 0


def console_main(argv: list[str] | None = None) -> int:
    """The ``rlhf-pairs`` command: :func:`main`, with a user error (bad input, file, flag value or configuration) as
    one line and exit status 1 instead of a traceback (``RLHF_PAIRS_DEBUG=1`` shows it)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    prog = f"rlhf-pairs {argv[0]}" if argv and argv[0] in JOBS else "rlhf-pairs"
    status = 0

    def command():
        nonlocal status
        status = main(argv)

    return report_user_errors(command, prog) or status


def console_script() -> NoReturn:
    """The ``rlhf-pairs`` executable: :func:`console_main` as this process's command
    (:func:`~rlhf_pairs.scripts.exit_process`: a launched worker that succeeded exits without the interpreter's
    teardown)."""
    exit_process(console_main)


if __name__ == "__main__":
    console_script()
