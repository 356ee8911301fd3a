"""Launch target for ``accelerate launch scripts/eval_judge.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.eval_judge`."""

from rlhf_pairs.scripts import eval_judge, run_command

if __name__ == "__main__":
    raise SystemExit(run_command(eval_judge))
