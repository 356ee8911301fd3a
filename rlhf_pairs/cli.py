"""The ``rlhf-pairs`` console command: one subcommand per job, each reaching the same ``main`` as its script."""

from __future__ import annotations

import argparse
import sys

from rlhf_pairs import __version__

# subcommand -> (module with make_parser() and main(args), one-line help); jobs arrive with their issues.
JOBS = {
    "demo": ("rlhf_pairs.demo", "judge bundled pairs with the embedded SmolLM2 (offline, CPU)"),
}


def main(argv: list[str] | None = None) -> int:
    import importlib

    parser = argparse.ArgumentParser(prog="rlhf-pairs", description="RLHF with pairwise preference models on TRL")
    parser.add_argument("--version", action="version", version=f"rlhf-pairs {__version__}")
    sub = parser.add_subparsers(dest="job", required=True)
    argv = sys.argv[1:] if argv is None else argv
    job = next((a for a in argv if a in JOBS), None)
    for name, (module, help_text) in JOBS.items():
        job_parser = sub.add_parser(name, help=help_text)
        if name == job:  # import only the job that runs
            importlib.import_module(module).make_parser(job_parser)
    args = parser.parse_args(argv)
    importlib.import_module(JOBS[args.job][0]).main(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
