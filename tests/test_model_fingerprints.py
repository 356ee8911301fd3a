"""Content digests of the local models and templates a job reads: a judge or policy saved again into the same folder
(retrained, replaced) is another input, so finished work made with the old one is not reused; weights are hashed
once per machine and again only after they change; work recorded before these digests existed still resumes."""

import json
import os
import time

import pytest

from rlhf_pairs.configs import JudgeArguments
from rlhf_pairs.testing_utils import build_tiny_pair_lm
from rlhf_pairs.trainer.stages import Stage, StageConfigChanged
from rlhf_pairs.utils import hashing
from rlhf_pairs.utils.hashing import local_model_sha256, memoized_file_sha256


def age(path, seconds: float = 60.0) -> None:
    """Set ``path``'s modification time ``seconds`` into the past (a file written earlier, not just now)."""
    then = time.time() - seconds
    os.utime(path, (then, then))


@pytest.fixture
def reads(monkeypatch):
    """The files :func:`memoized_file_sha256` reads whole, in order."""
    seen = []
    real = hashing.file_sha256

    def counting(path):
        seen.append(os.path.basename(path))
        return real(path)

    monkeypatch.setattr(hashing, "file_sha256", counting)
    return seen


def test_weights_are_read_once_until_they_change_even_at_the_same_size_and_time(tmp_path, reads, monkeypatch):
    monkeypatch.setattr(hashing, "MEMO_MIN_AGE_S", 0.05)  # instead of waiting 2 s for the file to count as settled
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"a" * 4096)
    time.sleep(0.1)
    first = memoized_file_sha256(weights)
    assert memoized_file_sha256(weights) == first and reads == ["model.safetensors"]  # the second from the memo
    recorded = weights.stat().st_mtime_ns
    weights.write_bytes(b"b" * 4096)  # rewritten in place: same size, then the old modification time put back
    os.utime(weights, ns=(recorded, recorded))
    assert memoized_file_sha256(weights) == hashing.file_sha256(weights) != first  # its change time moved


def test_a_file_written_just_now_is_hashed_but_not_memoized(tmp_path, reads):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"fresh")
    age(weights)  # copied with its old modification time kept (cp -p): changed just now all the same
    memoized_file_sha256(weights)
    memoized_file_sha256(weights)
    assert reads == ["model.safetensors", "model.safetensors"]  # a rewrite in the same timestamp tick would hide


def test_a_model_digest_covers_the_files_from_pretrained_reads(tmp_path):
    model = build_tiny_pair_lm(tmp_path / "judge", seed=0)
    digest = local_model_sha256(model)
    (model / ".cache").mkdir()
    (model / ".cache" / "download.lock").write_text("x")  # hidden: a hub download's bookkeeping
    (model / "checkpoint-10").mkdir()
    (model / "checkpoint-10" / "model.safetensors").write_bytes(b"a trainer's checkpoint")
    assert local_model_sha256(model) == digest
    build_tiny_pair_lm(model, seed=1)  # retrained into the same folder
    assert local_model_sha256(model) != digest
    config = json.loads((model / "config.json").read_text())
    rebuilt = local_model_sha256(model)
    (model / "config.json").write_text(json.dumps({**config, "note": "edited"}))
    assert local_model_sha256(model) != rebuilt


def test_the_judges_recorded_fields_hold_its_files_and_its_template_file(tmp_path):
    judge = build_tiny_pair_lm(tmp_path / "judge", seed=0)
    template = tmp_path / "judge.jinja"
    template.write_text("{{ question }}\nA: {{ response_a }}\nB: {{ response_b }}")
    fields = JudgeArguments(judge=str(judge), judge_type="llm", judge_template=str(template)).result_fields()
    assert fields["judge"] == str(judge.resolve()) and fields["judge_template"] == str(template.resolve())
    assert fields["judge_sha256"] == local_model_sha256(judge)
    template.write_text("{{ question }}\nFirst: {{ response_a }}\nSecond: {{ response_b }}")
    edited = JudgeArguments(judge=str(judge), judge_type="llm", judge_template=str(template)).result_fields()
    assert edited["judge_template_sha256"] != fields["judge_template_sha256"]
    assert edited["judge_sha256"] == fields["judge_sha256"]
    hub = JudgeArguments(judge="RLHFlow/pair-preference-model-LLaMA3-8B", judge_type="pair_lm").result_fields()
    assert "judge_sha256" not in hub  # a Hub name keeps the Hub's revision pinning


def test_a_stage_recorded_before_content_digests_resumes_and_one_recorded_with_them_checks_them(tmp_path):
    legacy = Stage(tmp_path, 1, "rank", {"generate": "abc", "judge": "/j", "method": "knockout"})
    legacy.commit(legacy.staging_dir(), {})
    inputs = {"judge_sha256": "the judge's files in /j"}
    now = Stage(tmp_path, 1, "rank", {**legacy.fingerprint, "judge_sha256": "1" * 64}, inputs=inputs)
    assert now.check() and now.digest == legacy.digest  # later stages keep their chain
    other = tmp_path / "other"
    recorded = Stage(other, 1, "rank", now.fingerprint, inputs=inputs)
    recorded.commit(recorded.staging_dir(), {})
    # The input no longer there to digest (an initial policy deleted after the rounds that read it): not compared; a
    # stage that still needs it fails loading it.
    assert Stage(other, 1, "rank", legacy.fingerprint, inputs=inputs).check()
    changed = Stage(other, 1, "rank", {**legacy.fingerprint, "judge_sha256": "2" * 64}, inputs=inputs)
    with pytest.raises(
        StageConfigChanged,
        match=r"round_1/rank was made from other data: the judge's files in /j changed since it ran \(changed: "
        r"judge_sha256 \('1111",
    ):
        changed.check()
