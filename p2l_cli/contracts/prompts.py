"""The prompts contract: what a prompt value may be, and how its user turns are read.

A prompt is text, a list of user turns, or a chat: a list of messages (OpenAI
``{"role", "content"}`` or ShareGPT ``{"from", "value"}``; ``content`` may be a list of
``{"type": "text", "text"}`` parts), alone or as ``{"messages": [...]}``. Text holding a JSON
list of turns or messages (how CSV files store lists) is decoded. Only the user's turns
count; blank turns carry nothing and are dropped. ``prepare``, ``predict``, ``evaluate``
and ``serve`` all read prompts here.
"""

from __future__ import annotations

import json
from typing import Any

USER_ROLES = ("user", "human")


class BadPrompt(ValueError):
    """A prompt value that cannot be read as user turns; the message says why."""


def user_turns(value: Any) -> list[str]:
    """The non-blank user turns of a prompt value; ``[]`` when it holds none (``None``,
    blank text, a chat without a user turn). Raises :class:`BadPrompt` for a value of
    another shape."""
    if value is None:
        return []
    if isinstance(value, str):
        decoded = _json_list(value)
        items = [value] if decoded is None else decoded
    elif isinstance(value, dict):
        items = value.get("messages", [value])
        if not isinstance(items, list):
            raise BadPrompt("'messages' is not a list")
    elif isinstance(value, (list, tuple)):
        items = list(value)
    elif hasattr(value, "tolist"):  # numpy arrays, polars Series
        items = list(value.tolist())
    else:
        raise BadPrompt(f"a prompt must be text or a list, not {type(value).__name__}")
    return [utf8_text(turn) for turn in _turns_of_list(items) if turn.strip()]


def prompt_turns(value: Any) -> list[str]:
    """:func:`user_turns` for a prompt that must hold one: raises :class:`BadPrompt` when
    it holds none."""
    if value is None:
        raise BadPrompt("no prompt (null)")
    turns = user_turns(value)
    if not turns:
        raise BadPrompt("empty prompt (no user turn with text)")
    return turns


def _json_list(text: str) -> list | None:
    stripped = text.strip()
    if not (stripped.startswith("[") and stripped.endswith("]")):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    if (isinstance(value, list) and value
            and all(isinstance(v, (str, dict, type(None))) for v in value)):
        return value
    return None


def _turns_of_list(items: list) -> list[str]:
    items = [item for item in items if item is not None]
    if all(isinstance(item, str) for item in items):
        return items
    if not all(isinstance(item, dict) for item in items):
        raise BadPrompt("a prompt list must hold only strings or only messages")
    turns = []
    for number, message in enumerate(items):
        role = message.get("role", message.get("from"))
        if not isinstance(role, str):
            raise BadPrompt(f"message {number} has no 'role' (or 'from')")
        if role.lower() in USER_ROLES:
            turns.append(_message_text(message, number))
    return turns


def _message_text(message: dict, number: int) -> str:
    content = message.get("content", message.get("value"))
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: keep the text parts
        parts = [p.get("text") or "" if isinstance(p, dict) else str(p) for p in content]
        return "\n".join(part for part in parts if part)
    raise BadPrompt(f"message {number} content must be text, not {type(content).__name__}")


def utf8_text(text: str) -> str:
    """Text that can be written as UTF-8: JSON escapes may leave lone surrogates."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
