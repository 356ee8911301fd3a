"""Public names that load on first use (PEP 562), for ``rlhf_pairs`` and ``rlhf_pairs.judges``: importing the package
costs nothing until a name is used, so ``rlhf-pairs --help`` and the configs load no torch, transformers or TRL."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str], namespace: dict):
    """``(__getattr__, __dir__)`` for ``package``, whose public names are the keys of ``exports`` (name -> the module
    defining it, absolute or ``.relative`` to ``package``). A name is imported on its first lookup and stored in
    ``namespace`` (the package's ``globals()``), so later lookups skip ``__getattr__``."""

    def __getattr__(name: str):
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted([*namespace, *exports])

    return __getattr__, __dir__
