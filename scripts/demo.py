"""Launch target for ``accelerate launch scripts/demo.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.demo`."""

from rlhf_pairs.scripts import command_main, demo

if __name__ == "__main__":
    command_main(demo)
