"""Every shipped recipe folder is parsed by its job's own test; a new folder must come with one."""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# folder -> the test module that parses each of its YAML files with the job's parser
PARSED_BY = {
    "accelerate": "test_online_training.py",
    "best_of_n": "test_best_of_n.py",
    "eval": "test_evaluation.py",
    "grpo": "test_online_training.py",
    "iterative_dpo": "test_iterate.py",
    "online_dpo": "test_online_training.py",
    "pair_pm": "test_train_pair_pm.py",
    "pairrm": "test_train_pairrm.py",
    "rank": "test_rank_job.py",
    "sppo": "test_sppo.py",  # iterate with mode: sppo
}


def test_every_recipe_folder_has_a_parse_test():
    folders = {p.name for p in (ROOT / "recipes").iterdir() if p.is_dir()}
    assert folders == set(PARSED_BY)
    for folder, module in PARSED_BY.items():
        assert list((ROOT / "recipes" / folder).glob("*.yaml")), folder
        assert (
            f'"{folder}"' in (ROOT / "tests" / module).read_text()
            or f"/{folder}" in (ROOT / "tests" / module).read_text()
        ), (folder, module)
