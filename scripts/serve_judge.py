"""Launch target for ``python scripts/serve_judge.py [--config RECIPE] [args]`` (== ``rlhf-pairs serve-judge``): the job
lives in :mod:`rlhf_pairs.scripts.serve_judge`."""

from rlhf_pairs.scripts import run_command, serve_judge

if __name__ == "__main__":
    raise SystemExit(run_command(serve_judge))
