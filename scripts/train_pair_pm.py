"""Launch target for ``accelerate launch scripts/train_pair_pm.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.train_pair_pm`."""

from rlhf_pairs.scripts import command_main, train_pair_pm

if __name__ == "__main__":
    command_main(train_pair_pm)
