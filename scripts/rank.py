"""Launch target for ``accelerate launch scripts/rank.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.rank`."""

from rlhf_pairs.scripts import rank, run_command

if __name__ == "__main__":
    raise SystemExit(run_command(rank))
