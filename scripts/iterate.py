"""Launch target for ``accelerate launch scripts/iterate.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.iterate`."""

from rlhf_pairs.scripts import iterate, run_command

if __name__ == "__main__":
    raise SystemExit(run_command(iterate))
