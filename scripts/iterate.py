"""Launch target for ``accelerate launch scripts/iterate.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.iterate`."""

from rlhf_pairs.scripts import command_main, iterate

if __name__ == "__main__":
    command_main(iterate)
