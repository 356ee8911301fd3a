"""Launch target for ``accelerate launch scripts/train_pairrm.py [--config RECIPE] [args]`` (== ``rlhf-pairs``'s job of the
same script): the job lives in :mod:`rlhf_pairs.scripts.train_pairrm`."""

from rlhf_pairs.scripts import command_main, train_pairrm

if __name__ == "__main__":
    command_main(train_pairrm)
