"""Launch target for ``accelerate launch scripts/online_dpo.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.online_dpo`."""

from rlhf_pairs.scripts import online_dpo, run_command

if __name__ == "__main__":
    raise SystemExit(run_command(online_dpo))
