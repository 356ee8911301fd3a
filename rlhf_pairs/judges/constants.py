"""PairRM's token budgets (the PairRM-hf card), torch-free for the configs' defaults (``PairRMTrainConfig``);
``rlhf_pairs.judges.pairrm`` uses (and re-exports) them."""

SOURCE_MAX_LENGTH = 1224
CANDIDATE_MAX_LENGTH = 412
MAX_LENGTH = SOURCE_MAX_LENGTH + 2 * CANDIDATE_MAX_LENGTH  # 2048
