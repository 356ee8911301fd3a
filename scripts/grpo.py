"""Launch target for ``accelerate launch scripts/grpo.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.grpo`."""

from rlhf_pairs.scripts import command_main, grpo

if __name__ == "__main__":
    command_main(grpo)
