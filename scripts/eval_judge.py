"""Launch target for ``accelerate launch scripts/eval_judge.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.eval_judge`."""

from rlhf_pairs.scripts import command_main, eval_judge

if __name__ == "__main__":
    command_main(eval_judge)
