"""Launch target for ``accelerate launch scripts/best_of_n.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of
the same script): the job lives in :mod:`rlhf_pairs.scripts.best_of_n`."""

from rlhf_pairs.scripts import best_of_n, command_main

if __name__ == "__main__":
    command_main(best_of_n)
