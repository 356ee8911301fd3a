"""Plumbing shared by the jobs: atomic files (``io``), the process group (``distributed``), kill points for resume
tests (``faults``) and trainer checkpoints (``checkpoints``)."""
