"""Data helpers below the judges: prompts as strings or chat messages (validated once), the text of TRL
completions and messages, and the one loader of datasets-loadable sources (Hub names, local files, saved datasets)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

Message = dict
Prompt = str | list[Message]

USER_ROLES = ("user",)
ASSISTANT_ROLES = ("assistant",)
SYSTEM_MESSAGE_MODES = ("merge", "drop", "error")


def validate_prompt(prompt: Prompt, name: str = "prompt") -> None:
    """Raise ``ValueError`` unless ``prompt`` is a string or a conversation that alternates user/assistant turns,
    starts with a user turn and ends with a user turn (the responses being judged come next).

    Roles are matched case-insensitively ("USER"/"ASSISTANT", as in the PairRM card, are accepted). The seed
    models have no system role, so a system message is refused rather than silently dropped.
    """
    if isinstance(prompt, str):
        return
    if not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError(f"`{name}` must be a string or a non-empty list of chat messages, got {prompt!r:.80}")
    for i, message in enumerate(prompt):
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            raise ValueError(f"`{name}[{i}]` must be a dict with 'role' and 'content', got {message!r:.80}")
        if not isinstance(message["content"], str):
            raise ValueError(f"`{name}[{i}]['content']` must be a string, got {type(message['content']).__name__}")
        expected = USER_ROLES if i % 2 == 0 else ASSISTANT_ROLES
        if str(message["role"]).lower() not in expected:
            raise ValueError(
                f"`{name}` must alternate user/assistant turns starting with user: message {i} has role "
                f"{message['role']!r}, expected {expected[0]!r}"
            )
    if len(prompt) % 2 == 0:
        raise ValueError(
            f"`{name}` must end with a user turn (the judged responses answer it); it has {len(prompt)} messages "
            f"and ends with an assistant turn"
        )


def prompt_key(prompt: Prompt) -> str | tuple:
    """A hashable key for a prompt (for caches and grouping)."""
    if isinstance(prompt, str):
        return prompt
    return tuple((str(m["role"]).lower(), m["content"]) for m in prompt)


def as_messages(prompt: Prompt) -> list[Message]:
    """The prompt as a list of ``{"role", "content"}`` messages with lower-case roles."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": str(m["role"]).lower(), "content": m["content"]} for m in prompt]


def message_text(content: Any) -> str:
    """The text of a chat message's ``content``: a string as is, a list of parts as its text parts joined by
    newlines (multimodal messages), ``None`` as ``""``."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        return "\n".join(part["text"] for part in content if isinstance(part, dict) and part.get("type") == "text")
    raise ValueError(f"message content must be a string or a list of parts, got {type(content).__name__}")


def completion_text(completion: str | Sequence[dict]) -> str:
    """The response text of a TRL completion.

    A string is returned as is. A conversational completion (a list of messages, e.g.
    ``[{"role": "assistant", "content": "..."}]``) becomes the text of its assistant messages joined by blank
    lines; tool messages and tool calls of an agentic rollout are not part of what the judge reads.
    """
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, (list, tuple)):
        raise ValueError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")
    texts = [
        message_text(m.get("content"))
        for m in completion
        if isinstance(m, dict) and str(m.get("role", "assistant")).lower() == "assistant"
    ]
    return "\n\n".join(text for text in texts if text)


def judge_prompt(prompt: Prompt, system_message: str = "merge") -> Prompt:
    """A TRL prompt (a string, or chat messages possibly led by system messages) as a judge prompt.

    The seed pair judges have no system role (``validate_prompt`` refuses one), while TRL conversational datasets
    often start with a system message. Leading system messages are handled per ``system_message``:
    ``"merge"`` (default) prepends their text to the first user message, separated by a blank line, so an
    instruction such as "answer in French" still reaches the judge; ``"drop"`` removes them; ``"error"`` raises.
    Message contents given as lists of parts are reduced to their text. Strings are returned unchanged.
    """
    if isinstance(prompt, str):
        return prompt
    if system_message not in SYSTEM_MESSAGE_MODES:
        raise ValueError(f"`system_message` must be one of {SYSTEM_MESSAGE_MODES}, got {system_message!r}")
    messages = [{"role": str(m["role"]).lower(), "content": message_text(m.get("content"))} for m in prompt]
    system = []
    while messages and messages[0]["role"] == "system":
        system.append(messages.pop(0)["content"])
    if system and system_message == "error":
        raise ValueError(f"prompt starts with a system message and system_message='error': {prompt!r:.120}")
    if system and system_message == "merge" and messages:
        messages[0] = {**messages[0], "content": "\n\n".join([*system, messages[0]["content"]])}
    return messages


# ---------------------------------------------------------------------------------------------------------------------
# The one dataset loader
# ---------------------------------------------------------------------------------------------------------------------


def _saved_dataset(path: Path, split: str) -> Path | None:
    """The ``save_to_disk`` directory for ``split`` under ``path`` (a saved ``Dataset`` or ``DatasetDict``), if any."""
    return next((d for d in (path, path / split) if (d / "dataset_info.json").is_file()), None)


LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv", ".arrow")


def check_local_source(name: str) -> None:
    """Raise ``FileNotFoundError`` naming ``name`` when it can only mean a local path (a data-file suffix, ``./``,
    ``../``, ``~`` or an absolute path) and nothing is there; otherwise datasets would report it as a malformed
    Hub repository id or an unreachable Hub dataset."""
    path = Path(name).expanduser()
    looks_local = name.startswith((".", "/", "~")) or path.suffix in LOCAL_SUFFIXES or name.count("/") > 1
    if looks_local and not path.exists():
        raise FileNotFoundError(
            f"dataset {name!r}: no such file or directory (from {Path.cwd()}); give an existing local file "
            "(.jsonl, .json, .parquet), a save_to_disk directory, or a Hub dataset name such as 'org/name'"
        )


def split_names(name: str, config: str | None = None) -> list[str]:
    """The splits of a datasets-loadable source. A local file or a saved ``Dataset`` is one split, ``"train"``."""
    import datasets

    check_local_source(name)
    path = Path(name)
    if path.is_file() or (path / "dataset_info.json").is_file():
        return ["train"]
    if (path / "dataset_dict.json").is_file():
        return list(datasets.load_from_disk(str(path)))
    return list(datasets.get_dataset_split_names(name, config))


def load_split(name: str, config: str | None = None, split: str = "train"):
    """One split of a datasets-loadable source as a ``datasets.Dataset``: a local jsonl/json/parquet file or a saved
    ``Dataset`` (one split, returned whatever ``split`` is asked), a ``save_to_disk`` ``DatasetDict`` directory, or a
    Hub (or local script/data-directory) dataset with configuration ``config``.

    Raises ``ValueError`` when ``config`` is given for a local file or a saved dataset, which have no configurations.
    """
    import datasets

    check_local_source(name)
    path = Path(name)
    saved = _saved_dataset(path, split)
    if config is not None and (path.is_file() or saved is not None):
        raise ValueError(
            f"dataset configuration {config!r} was given for {name!r}, a local file or saved dataset, which has "
            "no configurations; drop it or point `dataset_name` at a Hub or script dataset"
        )
    if path.is_file():
        builder = "parquet" if path.suffix == ".parquet" else "json"
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if saved is not None:
        return datasets.load_from_disk(str(saved))
    return datasets.load_dataset(name, config, split=split)


def load_rows(
    name: str, config: str | None = None, split: str = "train", line_numbers: list[int] | None = None
) -> list[dict]:
    """The rows of :func:`load_split` as dicts. A local ``.jsonl`` file is read line by line instead, so a column
    that mixes strings and message lists (e.g. prompts), which Arrow cannot hold, is kept as it is; for it,
    ``line_numbers`` (when given) receives each row's line in the file, for messages about a row."""
    check_local_source(name)
    path = Path(name)
    if path.is_file() and path.suffix == ".jsonl":
        if config is not None:
            load_split(name, config, split)  # raises the configuration error
        from rlhf_pairs.utils.io import read_jsonl

        return read_jsonl(path, line_numbers)
    return load_split(name, config, split).to_list()
