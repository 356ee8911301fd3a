"""Launch target for ``accelerate launch scripts/online_dpo.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.online_dpo`."""

from rlhf_pairs.scripts import command_main, online_dpo

if __name__ == "__main__":
    command_main(online_dpo)
