"""Launch target for ``accelerate launch scripts/demo.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.demo`."""

from rlhf_pairs.scripts import demo, run_command

if __name__ == "__main__":
    raise SystemExit(run_command(demo))
