"""Rank candidate responses with a pair judge (== ``rlhf-pairs rank``).

    accelerate launch --config_file recipes/accelerate/cpu_2proc.yaml scripts/rank.py \
        --config recipes/rank/pair_lm_knockout.yaml --dataset candidates.jsonl --output ranked.jsonl
"""

from rlhf_pairs.rank_cli import main, make_parser  # noqa: F401

if __name__ == "__main__":
    main()
