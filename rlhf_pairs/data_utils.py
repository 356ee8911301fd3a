"""Data helpers below the judges: prompts as strings or chat messages (validated once), what a judge reads of a
prompt (system turns, chat strings already rendered with a template), the text of TRL completions and messages, and
the one loader of datasets-loadable sources (Hub names, local files, saved datasets, RLHFlow's older LMFlow files)."""

from __future__ import annotations

import json
import re
from collections import Counter
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
# Chat strings already rendered with a chat template (RLHFlow's older generation files)
# ---------------------------------------------------------------------------------------------------------------------

# Per recognised template: (text that may lead the string, one turn with its role and content, the generation prompt
# that may end it). Contents are non-greedy up to the turn's end token, so a turn cannot swallow the next one.
RENDERED_CHAT_TEMPLATES = {
    "llama-3": (
        "<|begin_of_text|>",
        re.compile(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", re.S),
        re.compile(r"<\|start_header_id\|>assistant<\|end_header_id\|>\s*"),
    ),
    "chatml": (
        "",
        re.compile(r"<\|im_start\|>(\w+)\n(.*?)<\|im_end\|>", re.S),
        re.compile(r"<\|im_start\|>assistant\s*"),
    ),
    "gemma": (
        "<bos>",
        re.compile(r"<start_of_turn>(\w+)\n(.*?)<end_of_turn>", re.S),
        re.compile(r"<start_of_turn>model\s*"),
    ),
}
# Turn openers of chat templates: a prompt string holding one was most likely rendered with a template.
RENDERED_CHAT_MARKERS = (
    "<|start_header_id|>",
    "<|im_start|>",
    "<start_of_turn>",
    "[INST]",
    "<|user|>",
    "GPT4 Correct User:",
)
_ROLES = {"system": "system", "user": "user", "assistant": "assistant", "model": "assistant"}


def looks_rendered(text: str) -> bool:
    """Whether a prompt string holds a chat template's turn opener (:data:`RENDERED_CHAT_MARKERS`)."""
    return any(marker in text for marker in RENDERED_CHAT_MARKERS)


def parse_rendered_chat(text: str) -> tuple[list[Message], str] | None:
    """(messages, template name) of a string that is a whole conversation rendered with a recognised chat template
    (:data:`RENDERED_CHAT_TEMPLATES`: Llama-3, ChatML, Gemma), else ``None``.

    The string must be nothing but the template's turns (whitespace between turns allowed), optionally led by its
    BOS text and ended by its generation prompt, with system turns first, then user/assistant turns alternating from
    a user turn to a final user turn (what a generation prompt was rendered from). Gemma's ``model`` role becomes
    ``assistant``.
    """
    stripped = text.lstrip()
    for name, (bos, turn, generation_prompt) in RENDERED_CHAT_TEMPLATES.items():
        rest = stripped[len(bos) :] if bos and stripped.startswith(bos) else stripped
        messages, pos = [], 0
        while match := turn.match(rest, pos):
            role = _ROLES.get(match.group(1).lower())
            if role is None:
                break
            messages.append({"role": role, "content": match.group(2)})
            pos = match.end()
            while pos < len(rest) and rest[pos].isspace():
                pos += 1
        else:
            ending = generation_prompt.match(rest, pos)
            if ending is not None:
                pos = ending.end()
            if messages and not rest[pos:].strip() and _is_conversation(messages):
                return messages, name
    return None


def _is_conversation(messages: list[Message]) -> bool:
    """System turns first, then user/assistant alternating from a user turn to a final user turn."""
    roles = [m["role"] for m in messages]
    while roles and roles[0] == "system":
        roles.pop(0)
    return (
        bool(roles)
        and len(roles) % 2 == 1
        and all(r == ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles))
    )


# What preparing a prompt for the judge did to it (counted by the jobs, reported in their summaries).
PROMPT_NOTES = ("system_merged", "system_dropped", "rendered_chat_parsed", "rendered_chat_unparsed")


def prepare_prompt(
    prompt: Prompt, system_message: str = "merge", name: str = "prompt"
) -> tuple[Prompt, Prompt, list[str]]:
    """The one rule every job applies to a dataset's prompt: returns (conversation, judge prompt, notes).

    - A string already rendered with a chat template (:func:`parse_rendered_chat`) becomes its messages, note
      ``"rendered_chat_parsed"``; a string that holds a template's turn opener in a template that is not recognised
      stays text, note ``"rendered_chat_unparsed"`` (the judge reads the template's tokens as plain text).
    - The conversation (the parsed messages, else ``prompt`` as given, system turns included) is what a policy
      renders with its own chat template.
    - The judge prompt is :func:`judge_prompt` of the conversation under ``system_message`` (note
      ``"system_merged"`` or ``"system_dropped"`` when it had leading system turns), validated with
      :func:`validate_prompt`.

    Raises ``ValueError`` naming ``name``: a prompt that is neither a string nor a list of role/content messages, a
    system turn with ``system_message="error"``, or a conversation the judge cannot read (see
    :func:`validate_prompt`).
    """
    notes = []
    conversation = prompt
    if isinstance(prompt, str):
        if looks_rendered(prompt):
            parsed = parse_rendered_chat(prompt)
            if parsed is None:
                notes.append("rendered_chat_unparsed")
            else:
                conversation = parsed[0]
                notes.append("rendered_chat_parsed")
    elif not isinstance(prompt, (list, tuple)) or not prompt:
        raise ValueError(f"`{name}` must be a string or a non-empty list of chat messages, got {prompt!r:.80}")
    else:
        for i, message in enumerate(prompt):
            if not isinstance(message, dict) or "role" not in message or "content" not in message:
                raise ValueError(f"`{name}[{i}]` must be a dict with 'role' and 'content', got {message!r:.80}")
    if system_message not in SYSTEM_MESSAGE_MODES:
        raise ValueError(f"`system_message` must be one of {SYSTEM_MESSAGE_MODES}, got {system_message!r}")
    has_system = not isinstance(conversation, str) and str(conversation[0]["role"]).lower() == "system"
    if has_system and system_message == "error":
        raise ValueError(
            f"`{name}` starts with a system message and `system_message` is 'error'; use 'merge' (into the first "
            "user turn) or 'drop'"
        )
    try:
        judged = judge_prompt(conversation, system_message)
    except ValueError as err:  # a message content that is not text
        raise ValueError(f"`{name}`: {err}") from None
    if has_system:
        notes.append("system_merged" if system_message == "merge" else "system_dropped")
    validate_prompt(judged, name)
    return conversation, judged, notes


def describe_prompt_notes(counts: Counter | dict, system_message: str = "merge") -> list[str]:
    """One warning per kind of prompt that :func:`prepare_prompt` changed or could not read, with its count."""
    lines = []
    if counts.get("rendered_chat_parsed"):
        lines.append(
            f"{counts['rendered_chat_parsed']} prompt(s) are strings already rendered with a chat template "
            f"(Llama-3, ChatML or Gemma); read as the chat messages they hold"
        )
    if counts.get("rendered_chat_unparsed"):
        markers = ", ".join(RENDERED_CHAT_MARKERS)
        lines.append(
            f"{counts['rendered_chat_unparsed']} prompt(s) hold chat-template tokens ({markers}) "
            "in a template that is not recognised: the judge reads those tokens as plain text. Fix: give the "
            'conversation as a message list, [{"role": "user", "content": ...}]'
        )
    system = counts.get("system_merged", 0) + counts.get("system_dropped", 0)
    if system:
        action = "merged into the first user turn" if system_message == "merge" else "dropped"
        lines.append(
            f"{system} prompt(s) start with a system turn: {action} for the judge (`system_message: "
            f"{system_message}`; 'error' refuses them)"
        )
    return lines


def row_locator(source: str, line_numbers: Sequence[int] | None = None):
    """``where(i)``: how messages name row ``i`` of ``source``: ``"<source>, line <n>"`` when ``line_numbers`` (from
    :func:`load_rows` or :func:`load_split`) holds its line in the file, else ``"<source>, row <i>"``."""

    def where(i: int) -> str:
        return f"{source}, line {line_numbers[i]}" if line_numbers else f"{source}, row {i}"

    return where


def prepare_prompts(prompts: Sequence, where, system_message: str = "merge") -> tuple[list, list, Counter]:
    """:func:`prepare_prompt` of every prompt, before any of them is used: (conversations, judge prompts, the counts of
    every :data:`PROMPT_NOTES` key, zeros included). Raises ``ValueError`` for the first bad prompt, located by
    ``where(i)`` (see :func:`row_locator`)."""
    conversations, judged, counts = [], [], Counter(dict.fromkeys(PROMPT_NOTES, 0))
    for i, prompt in enumerate(prompts):
        try:
            conversation, judge_prompt_, notes = prepare_prompt(prompt, system_message)
        except ValueError as err:
            raise ValueError(f"{where(i)}: {err}") from None
        conversations.append(conversation)
        judged.append(judge_prompt_)
        counts.update(notes)
    return conversations, judged, counts


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
    return list(datasets.get_dataset_split_names(name, config, **_local_folder_cache(path)))


def load_split(name: str, config: str | None = None, split: str = "train", line_numbers: list[int] | None = None):
    """One split of a datasets-loadable source as a ``datasets.Dataset``: a local jsonl/json/parquet file or a saved
    ``Dataset`` (one split, returned whatever ``split`` is asked), a ``save_to_disk`` ``DatasetDict`` directory, or a
    Hub (or local script/data-directory) dataset with configuration ``config``.

    Local ``.jsonl``/``.json`` files are read by :func:`load_rows`'s reader, not by datasets' JSON reader, so every
    job reads them alike and a bad file gets one clear message naming the file and line (invalid JSON, a line that is
    not an object, bytes that are not UTF-8, a lone surrogate; a UTF-8 byte-order mark is fine); the rows then become
    a dataset with :func:`rows_to_dataset`. ``line_numbers`` (when given) receives each row's line in the file when
    the file was read line by line.

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
        rows = _local_json_rows(path, line_numbers)
        if rows is not None:
            return rows_to_dataset(rows)
        builder = "parquet" if path.suffix == ".parquet" else "json"
        return datasets.load_dataset(builder, data_files=str(path), split="train")
    if saved is not None:
        return datasets.load_from_disk(str(saved))
    return datasets.load_dataset(name, config, split=split, **_local_folder_cache(path))


def _local_folder_cache(path: Path) -> dict:
    """``{"cache_dir": ...}`` for a local data folder: a cache directory of its own, named after the folder's absolute
    path and content (:func:`~rlhf_pairs.utils.hashing.local_content_sha256`), so datasets builds it again whenever a
    file in it changed and never serves another folder's rows; ``{}`` for a Hub name (datasets' own cache and
    revision pinning apply).

    Why: datasets (seen with 5.1.0 and 5.2.0) caches a local folder whose README declares ``configs:`` under the
    folder's *name* and the configuration's file *patterns* only (``LocalDatasetModuleFactory`` hashes the builder
    configs, which hold the patterns, not the files they match). An edited file in such a folder, or another folder
    with the same name, then returned the rows cached first, silently. Plain folders and single files were re-read.
    """
    if not path.is_dir():
        return {}
    import datasets

    from rlhf_pairs.utils.hashing import local_content_sha256, sha256_json

    key = sha256_json([str(path.resolve()), local_content_sha256(path)])[:24]
    return {"cache_dir": str(Path(datasets.config.HF_DATASETS_CACHE) / "rlhf_pairs_local_folders" / key)}


def rows_to_dataset(rows: list[dict]):
    """``rows`` (dicts) as an in-memory ``datasets.Dataset``, as datasets' JSON reader would build it: the columns
    of all rows (a row without one gets ``None``), and a column whose values Arrow cannot hold as one type (e.g.
    prompts that are strings in some rows and message lists in others) typed ``Json``."""
    import datasets

    columns = list(dict.fromkeys(key for row in rows for key in row))
    return datasets.Dataset.from_dict(
        {column: [row.get(column) for row in rows] for column in columns}, on_mixed_types="use_json"
    )


def _local_json_rows(path: Path, line_numbers: list[int] | None) -> list[dict] | None:
    """The rows of a local ``.jsonl``/``.json`` file read by this module (see :func:`load_rows`), ``None`` for other
    files (parquet, csv, ...) and for JSON left to datasets' reader."""
    if path.suffix == ".jsonl":
        from rlhf_pairs.utils.io import read_jsonl

        return read_jsonl(path, line_numbers)
    if path.suffix == ".json":
        return _read_json_rows(path, line_numbers)
    return None


def load_rows(
    name: str, config: str | None = None, split: str = "train", line_numbers: list[int] | None = None
) -> list[dict]:
    """The rows of :func:`load_split` as dicts.

    Local JSON files are read by this module instead, so a column that mixes strings and message lists (e.g.
    prompts), which Arrow cannot hold, is kept as it is: a ``.jsonl`` file, or a ``.json`` file holding JSON lines
    (RLHFlow's generation writes those), line by line, ``line_numbers`` (when given) receiving each row's line in the
    file, for messages about a row; a ``.json`` file holding one LMFlow object, ``{"type": ..., "instances": [rows]}``
    (RLHFlow's older generation and annotation files, ``"type": "text_only"``: RLHFlow/Online-RLHF before commit
    d49a5dbbefbac7d1c6f3fce10e7d70201289b232), as its instances; a ``.json`` file holding a JSON array of objects,
    as its elements (no line numbers). Other ``.json`` files (an object over several lines that is not LMFlow's,
    e.g. a dict of columns) go to datasets' reader. Bad input raises ``ValueError`` naming the file and line (see
    :func:`~rlhf_pairs.utils.io.read_jsonl`); a missing local path is refused by :func:`load_split`."""
    path = Path(name)
    if path.is_file() and path.suffix in (".jsonl", ".json"):
        if config is not None:
            load_split(name, config, split)  # raises the configuration error
        rows = _local_json_rows(path, line_numbers)
        if rows is not None:
            return rows
    return load_split(name, config, split).to_list()


def load_prompt_rows(
    source: str, column: str, system_message: str = "merge", config: str | None = None, split: str = "train"
) -> tuple[list[dict], list, Counter]:
    """(rows of ``source``, the conversation of each row's ``column``, the counts of :data:`PROMPT_NOTES`), every
    prompt read with :func:`prepare_prompt` (the ``iterate`` and ``best-of-n`` jobs' prompts).

    Raises ``ValueError`` naming the source (and line, for a local JSON-lines file) for an empty dataset, a missing
    prompt column or an invalid prompt; ``FileNotFoundError`` for a local path that does not exist."""
    lines: list[int] = []
    rows = load_rows(source, config, split, line_numbers=lines)
    if not rows:
        raise ValueError(f"{source} has no rows")
    conversations, notes = [], Counter()
    for i, row in enumerate(rows):
        where = f"{source}, line {lines[i]}" if lines else f"{source}, row {i}"
        if column not in row:
            raise ValueError(f"{where}: no {column!r} column (the row has {sorted(row)}); set `prompt_column`")
        try:
            conversation, _, row_notes = prepare_prompt(row[column], system_message, column)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        conversations.append(conversation)
        notes.update(row_notes)
    return rows, conversations, notes


def _read_json_rows(path: Path, line_numbers: list[int] | None) -> list[dict] | None:
    """The rows of a ``.json`` file holding an LMFlow object or JSON lines; ``None`` for other JSON."""
    from rlhf_pairs.utils.io import read_jsonl

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError:
        return read_jsonl(path)  # raises the error naming the line
    if text.lstrip().startswith("["):
        return _json_array_rows(path, text)
    if not text.lstrip().startswith("{"):
        return read_jsonl(path, line_numbers)  # not JSON: the error naming the line
    try:
        document = json.loads(text)
    except json.JSONDecodeError:
        return read_jsonl(path, line_numbers)  # JSON lines, or invalid JSON named by its line
    if not isinstance(document, dict) or not isinstance(document.get("instances"), list):
        # One row on one line is JSON lines too; an object over several lines is left to datasets' reader.
        return read_jsonl(path, line_numbers) if "\n" not in text.strip() else None
    return _check_objects(path, document["instances"], "instances[{}]")


def _json_array_rows(path: Path, text: str) -> list[dict]:
    """The elements of a ``.json`` file holding one JSON array of objects; ``ValueError`` naming the file and where
    for invalid JSON, an element that is not an object or a lone surrogate."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}, line {err.lineno}: invalid JSON ({err.msg} at column {err.colno}); the file must hold one JSON "
            "array of objects, or one JSON object per line"
        ) from None
    return _check_objects(path, document, "element {} of the array")


def _check_objects(path: Path, rows: list, what: str) -> list[dict]:
    """``rows`` when each is a JSON object holding only text that can be written (no lone surrogate); else
    ``ValueError`` naming ``path`` and the row (``what.format(i)``)."""
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(f"{path}: {what.format(i)} is a JSON {type(row).__name__}, expected an object ({{...}})")
        try:
            json.dumps(row, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                f"{path}: {what.format(i)} holds a lone surrogate escape (e.g. \\ud800), which is not text; fix or "
                "drop that string"
            ) from None
    return rows
