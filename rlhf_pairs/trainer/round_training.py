"""One round's training in the iterative loop: TRL's ``DPOTrainer`` on the round's pairs (``SPPOTrainer``, its
subclass with SPPO's loss, when ``loss_type`` is sppo or sppo_single), or ``SFTTrainer`` on the best candidates
(rejection sampling), resumable from its last complete checkpoint, saved as a plain model.

The policy, the explicit reference model and the tokenizer load through :mod:`rlhf_pairs.utils.models`, so
``ModelConfig`` and the trainer config's ``model_init_kwargs`` apply as everywhere else. LoRA comes from
``ModelConfig`` (``use_peft``) and is merged into the saved model, so the next round starts from a plain
checkpoint. Under DeepSpeed ZeRO-3 the policy and the reference load partitioned and the saved model is whole: the
Trainer gathers it, or with LoRA every process gathers the weights and the main one merges and saves.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from rlhf_pairs.trainer.iterative_metrics import mean_logged_loss
from rlhf_pairs.utils.checkpoints import last_complete_checkpoint, remove_incomplete_checkpoints
from rlhf_pairs.utils.distributed import gathered_parameters, get_logger
from rlhf_pairs.utils.faults import kill_point
from rlhf_pairs.utils.io import write_json_atomic

logger = get_logger(__name__)  # main process only (rlhf_pairs.utils.distributed)


def train_round(
    rows: list[dict],
    policy_path: str,
    reference_path: str | None,
    training_args,
    model_args,
    checkpoint_dir: Path,
    save_dir: Path,
    state,
    label: str = "train",
) -> dict:
    """Train ``policy_path`` on ``rows`` and save the result in ``save_dir``; returns the training summary.

    ``rows`` are DPO pairs (``prompt``/``chosen``/``rejected``) when ``training_args`` is a ``DPOConfig`` (SPPO pairs,
    with the win-rate targets, for an SPPO ``loss_type``), SFT rows (``prompt``/``completion``) when it is an
    ``SFTConfig``; a ``margin`` key is dropped. ``reference_path`` is the
    DPO reference, passed to the trainer explicitly: TRL would otherwise rebuild it from the *policy's* path or, with
    LoRA, use the policy with its adapter disabled. That adapter-less policy is used only when it is the reference
    (``reference_path == policy_path``); otherwise the reference loads as a separate model.

    The trainer prints its step bar and one line at the end (``label``: steps, time, loss), not its per-step log
    records (:func:`~rlhf_pairs.trainer.console.quiet_trainer_console`; ``RLHF_PAIRS_VERBOSITY=debug`` prints them).
    Trainer checkpoints go to ``checkpoint_dir``; a run killed mid-training resumes from the last complete one
    (half-written ones are removed first). ``save_dir`` is emptied, then gets the model (LoRA merged), the tokenizer
    and ``log_history.json``. ``train_loss`` in the summary is :func:`mean_logged_loss` of the (restored) log history,
    so it is the same with or without a resume.

    **Assumptions**: every process calls this together with the same paths (``checkpoint_dir`` and ``save_dir`` on a
    file system all processes see); ``state`` is the job's accelerate ``PartialState``.

    **Raises**: what TRL's trainers and ``from_pretrained`` raise (a bad row format, a missing model).
    """
    import datasets
    from transformers import TrainerCallback
    from trl import DPOConfig, get_peft_config

    from rlhf_pairs.trainer.console import quiet_trainer_console
    from rlhf_pairs.utils.models import load_causal_lm, load_tokenizer
    from rlhf_pairs.utils.verbosity import filter_known_noise

    filter_known_noise()  # before the trainer is built: accelerate imports DeepSpeed there

    dataset = datasets.Dataset.from_list([{key: v for key, v in r.items() if key != "margin"} for r in rows])
    tokenizer = load_tokenizer(model_args, training_args, policy_path)
    model = load_causal_lm(model_args, training_args, policy_path)
    peft_config = get_peft_config(model_args)

    class KillPoint(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            kill_point("step")

    # `model_init_kwargs` were applied by load_causal_lm; cleared so TRL does not warn that they are ignored.
    args = dataclasses.replace(training_args, output_dir=str(checkpoint_dir), model_init_kwargs=None)
    common = {"args": args, "train_dataset": dataset, "processing_class": tokenizer, "peft_config": peft_config}
    dpo = isinstance(training_args, DPOConfig)
    if dpo:
        from trl import DPOTrainer

        from rlhf_pairs.trainer.sppo_trainer import SPPOTrainer, is_sppo_loss

        trainer_class = SPPOTrainer if is_sppo_loss(training_args) else DPOTrainer
        adapter_off_is_reference = peft_config is not None and reference_path == policy_path
        ref_model = None if adapter_off_is_reference else load_causal_lm(model_args, training_args, reference_path)
        trainer = trainer_class(model=model, ref_model=ref_model, callbacks=[KillPoint()], **common)
    else:
        from trl import SFTTrainer

        trainer = SFTTrainer(model=model, callbacks=[KillPoint()], **common)
    quiet_trainer_console(trainer, label)
    if state.is_main_process:
        remove_incomplete_checkpoints(checkpoint_dir)
    state.wait_for_everyone()
    checkpoint = last_complete_checkpoint(checkpoint_dir)
    if checkpoint:
        logger.info("%s: resuming from %s", label, checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)

    if state.is_main_process:
        if save_dir.exists():
            shutil.rmtree(save_dir)
        save_dir.mkdir(parents=True)
    state.wait_for_everyone()
    if peft_config:
        model = trainer.accelerator.unwrap_model(trainer.model)
        with gathered_parameters(model):  # ZeRO-3: every process gathers the whole weights, the main one merges
            if state.is_main_process:
                model.merge_and_unload().save_pretrained(save_dir)
    else:
        trainer.save_model(str(save_dir))  # every process: gathers ZeRO-3 shards
    state.wait_for_everyone()
    history = trainer.state.log_history
    if state.is_main_process:
        tokenizer.save_pretrained(save_dir)
        write_json_atomic(save_dir / "log_history.json", history)
        runs = checkpoint_dir / "runs"  # the Trainer's tensorboard logs (report_to), kept with the model
        if runs.is_dir():
            shutil.move(runs, save_dir / "runs")
    losses = [h["loss"] for h in history if "loss" in h]
    last = next((h for h in reversed(history) if "loss" in h), {})
    return {
        "rows": len(rows),
        "steps": trainer.state.global_step,
        "train_loss": mean_logged_loss(history),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "rewards_accuracy": last.get("rewards/accuracies"),
        "rewards_margin": last.get("rewards/margins"),
        "resumed_from": Path(checkpoint).name if checkpoint else None,
        "policy": policy_path,
        "reference": reference_path if dpo else None,
    }
