"""Trainers and training loops, where TRL keeps them: the pair-PM and PairRM trainers, the win-rate callback, online
training with a pair judge, and the iterative DPO / rejection-sampling loop with its stages."""
