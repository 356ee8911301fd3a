import pytest

from rlhf_pairs.tiny_models import build_tiny_pair_lm, build_tiny_pairrm


@pytest.fixture(scope="session")
def tiny_pair_lm_path(tmp_path_factory):
    return build_tiny_pair_lm(tmp_path_factory.mktemp("models") / "tiny-pair-lm")


@pytest.fixture(scope="session")
def tiny_pairrm_path(tmp_path_factory):
    return build_tiny_pairrm(tmp_path_factory.mktemp("models") / "tiny-pairrm")
