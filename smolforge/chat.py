"""Chat styles: how a `messages` record becomes training text, and the same rule as a
Jinja chat template so inference (HF `apply_chat_template`, llama.cpp) builds prompts
exactly as training did.

A rendered example is a list of segments `(text, loss)`; `loss` marks the spans the
model is trained to produce. Special tokens appear as their literal strings (`<s>`,
`</s>`), which the tokenizer maps to their ids.
"""

from __future__ import annotations

from typing import Literal

ChatStyle = Literal["plain"]
Segment = tuple[str, bool]

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

# plain: BOS, then each non-assistant turn followed by a newline, each assistant turn
# followed by EOS. The prompt for generation is everything before the assistant text.
_PLAIN_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\n' }}{% endif %}{% endfor %}"
)


def render(messages: list[dict], style: ChatStyle, loss_on: str = "assistant") -> list[Segment]:
    """Segments for one conversation; `loss_on` is "assistant" or "all"."""
    if style != "plain":
        raise ValueError(f"unknown chat style {style!r}")
    segments: list[Segment] = [(BOS, False)]
    for m in messages:
        if m["role"] == "assistant":
            segments.append((m["content"] + EOS, True))
        else:
            segments.append((m["content"] + "\n", loss_on == "all"))
    return segments


def prompt(messages: list[dict], style: ChatStyle) -> str:
    """The text a model continues to answer the last user turn of `messages`."""
    return "".join(text for text, _ in render(messages, style))


def template(style: ChatStyle) -> str:
    """The Jinja chat template that renders `style` (for HF and GGUF metadata)."""
    if style != "plain":
        raise ValueError(f"unknown chat style {style!r}")
    return _PLAIN_TEMPLATE
