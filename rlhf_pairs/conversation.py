"""Prompts as strings or chat message lists, validated once and rendered the way each seed model expects."""

from __future__ import annotations

Message = dict
Prompt = str | list[Message]

USER_ROLES = ("user",)
ASSISTANT_ROLES = ("assistant",)


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


PAIRRM_CONV_INSTRUCTION = (
    "Finish the following coversation in each i-th turn by filling in <Response i> with your response."
)


def pairrm_source_and_candidates(prompt: Prompt, response_a: str, response_b: str) -> tuple[str, str, str]:
    """PairRM's (source, candidate 1, candidate 2) texts.

    A string prompt or a single user message is used as is (the card's ``tokenize_pair``). A multi-turn prompt
    becomes the card's ``tokenize_conv_pair`` format: the two conversations share the context, differ in the last
    assistant turn, user turns go to the source and every assistant turn (earlier ones included) to the candidates.
    """
    messages = as_messages(prompt)
    if len(messages) == 1:
        return messages[0]["content"], response_a, response_b
    users = [m["content"] for m in messages[0::2]]
    earlier = [m["content"] for m in messages[1::2]]
    source = PAIRRM_CONV_INSTRUCTION + "\n".join(
        f"USER: {content}\nAssistant: <Response {i + 1}>" for i, content in enumerate(users)
    )

    def candidate(last: str) -> str:
        return "\n".join(f"<Response {i + 1}>: {content}" for i, content in enumerate([*earlier, last]))

    return source, candidate(response_a), candidate(response_b)
