"""Launch target for ``accelerate launch scripts/rank.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.rank`."""

from rlhf_pairs.scripts import command_main, rank

if __name__ == "__main__":
    command_main(rank)
