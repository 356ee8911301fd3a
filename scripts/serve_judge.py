"""Launch target for ``python scripts/serve_judge.py [--config RECIPE] [args]`` (== ``rlhf-pairs serve-judge``): the job
lives in :mod:`rlhf_pairs.scripts.serve_judge`."""

from rlhf_pairs.scripts import command_main, serve_judge

if __name__ == "__main__":
    command_main(serve_judge)
