"""Chat styles: how a `messages` record becomes training text, and the same rule as a
Jinja chat template so inference (HF `apply_chat_template`, llama.cpp) builds prompts
exactly as training did.

A rendered example is a list of segments `(text, loss)`; `loss` marks the spans the
model is trained to produce. Special tokens appear as their literal strings (`<s>`,
`</s>`), which the tokenizer maps to their ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from smolforge.core.card import Task

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


# ---------------------------------------------------------------- styles for real models
#
# Every style below is a Jinja chat template, and training text is rendered *from the
# template* (see `segments`), so HF `apply_chat_template`, llama.cpp (the template travels
# in the GGUF) and `smolforge.chat.cli` build a prompt exactly as training did. Styles:
#
#   template      the base tokenizer's own template (SmolLM2: <|im_start|>role\n...<|im_end|>)
#   human_bot     nanoChatGPT:  <human> ...EOS\n<bot> ...EOS\n
#   chat_builder  chat-builder: ~ term\n= student line\n# teacher line\n
#   task_tags     NanoPhi:      User: [Tag] ...EOS\nBot: [Tag] ...EOS\n
#   plain         as above (the nets model): <s>user\nassistant</s>
#
# A turn ends with one token that every runtime can be told to stop at: the tokenizer's
# EOS (`eos_token`: SmolLM2's <|im_end|>, a trained tokenizer's format EOS), or for
# chat_builder, whose turns are lines, the newline. nanoChatGPT and NanoPhi wrote
# `<endOfText>` / `<eot>` as plain text; in a pretrained vocabulary that is 4-5 ordinary
# tokens, which llama.cpp and Ollama cannot stop at by token id, and which a short
# finetune does not learn to emit (docs/chat.md, "Stop words and runtimes").
#
# Templates may read two extra variables: `term` (chat-builder's key term; format passes
# a conversation's word) and `tag` (NanoPhi's task tag; format passes each source's tag,
# and a template's default is the tag of the model's default task, see `style_template`).

RealStyle = Literal["template", "human_bot", "chat_builder", "task_tags", "plain"]

TASK_TAGS = {"conversations": "Chat", "qa": "QA"}  # NanoPhi-style task tag of each chat source
DEFAULT_TAG = "Chat"  # task_tags' default where no data says otherwise

_STYLE_TEMPLATES = {
    "plain": _PLAIN_TEMPLATE,
    "human_bot": (
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ '<human> ' + message['content'] + eos_token + '\n' }}"
        "{% else %}{{ '<bot> ' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<bot>' }}{% endif %}"
    ),
    "chat_builder": (
        "{% if term is defined and term %}{{ '~ ' + term + '\n' }}{% endif %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ '= ' + message['content'] + '\n' }}"
        "{% else %}{{ '# ' + message['content'] + '\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ '#' }}{% endif %}"
    ),
    "task_tags": (
        "{% set t = tag if tag is defined and tag else '@TAG@' %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ 'User: [' + t + '] ' + message['content'] + eos_token + '\n' }}"
        "{% else %}{{ 'Bot: [' + t + '] ' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Bot: [' + t + ']' }}{% endif %}"
    ),
}

# Besides the turn's end token (EOS; chat_builder's newline), what ends an assistant turn:
# the next speaker's tag, for a model that skips its end token. Generation stops at the
# first of these wherever a runtime can be told a stop string.
STOP_WORDS: dict[str, list[str]] = {
    "template": [],
    "plain": [],
    "human_bot": ["<human>", "<bot>"],
    "chat_builder": ["\n"],
    "task_tags": ["\nUser:", "\nBot:"],
}


def check_tag(tag: str) -> str | None:
    """What is wrong with a task tag (None: nothing): it sits between brackets on one line."""
    if not tag or tag != tag.strip() or any(c in tag for c in "[]\n\r'\\{}%"):
        return f"task tag {tag!r} must be non-empty text without brackets, quotes, braces, backslashes or newlines"
    return None


def style_template(style: str, base_template: str | None = None, default_tag: str = DEFAULT_TAG) -> str:
    """The Jinja template of `style`; `template` is the base tokenizer's own.

    default_tag: the task tag task_tags renders when the caller passes none (llama.cpp,
    Ollama and HF `apply_chat_template` never do): the tag of the model's default task.
    """
    if style == "template":
        if not base_template:
            raise ValueError("chat style 'template' needs a tokenizer that has a chat template")
        return base_template
    if style not in _STYLE_TEMPLATES:
        raise ValueError(f"unknown chat style {style!r} (known: template, {', '.join(_STYLE_TEMPLATES)})")
    problem = check_tag(default_tag)
    if problem:
        raise ValueError(problem)
    return _STYLE_TEMPLATES[style].replace("@TAG@", default_tag)


def turn_end(template: str, bos: str, eos: str) -> str:
    """The text `template` writes right after an assistant answer (its end-of-turn marker
    and what follows it, e.g. "<|im_end|>\n", "</s>", "\n"); '' when the template writes
    the answer at the very end of the chat and nothing after it."""
    sentinel = "ANSWERq7Zx"
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": sentinel}]
    text = render_text(template, messages, bos, eos)
    if text.count(sentinel) != 1:
        raise ValueError("the chat template does not write an answer exactly once")
    return text.split(sentinel, 1)[1]


def _environment():
    # the same settings as transformers' apply_chat_template, so both render identically
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(f"chat template: {message}")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    return env


_COMPILED: dict[str, object] = {}


def render_text(
    template: str,
    messages: list[dict],
    bos: str,
    eos: str,
    add_generation_prompt: bool = False,
    **extra,
) -> str:
    """`messages` rendered by a Jinja chat template, as `apply_chat_template` would."""
    if template not in _COMPILED:
        _COMPILED[template] = _environment().from_string(template)
    return _COMPILED[template].render(
        messages=messages,
        bos_token=bos,
        eos_token=eos,
        add_generation_prompt=add_generation_prompt,
        **extra,
    )


def segments(
    template: str, messages: list[dict], bos: str, eos: str, loss_on: str = "assistant", **extra
) -> list[Segment]:
    """Training segments of one conversation, cut out of the template's own rendering.

    Each turn's text is the difference between the rendering of the messages up to it
    and up to the turn before; an assistant turn is split where the generation prompt
    ends, so the header the prompt already holds is never trained on. This needs a
    template whose renderings extend each other (all common ones do); one that doesn't
    is refused rather than trained on text inference would never build.
    """
    out: list[Segment] = []
    prev = ""

    def take(text: str, loss: bool, what: str) -> None:
        nonlocal prev
        if not text.startswith(prev):
            raise ValueError(f"chat template does not extend the earlier turns' text at {what}")
        if len(text) > len(prev):
            out.append((text[len(prev) :], loss))
        prev = text

    for k, m in enumerate(messages):
        if m["role"] == "assistant":
            header = render_text(template, messages[:k], bos, eos, add_generation_prompt=True, **extra)
            take(header, loss_on == "all", f"the generation prompt before message {k}")
        turn = render_text(template, messages[: k + 1], bos, eos, **extra)
        take(turn, m["role"] == "assistant" or loss_on == "all", f"message {k} ({m['role']})")
    return out


def completion(title: str, text: str, style: str, bos: str, eos: str) -> list[Segment]:
    """A document as completion text (every token trained): title, blank line, body, EOS.

    NanoPhi's style tags it `[Textbook]`; the plain style starts with BOS like its chats.
    """
    head = f"[Textbook] {title}\n" if style == "task_tags" else f"{title}\n\n"
    start = bos if style == "plain" else ""
    return [(start + head + text + eos, True)]


@dataclass(frozen=True)
class Formatted:
    """What a track's format step hands stage format to write."""

    train: list[dict]  # {"id", "source", "messages", "segments": [[text, loss], ...]}
    val: list[dict]
    task: Task  # format's meta.json "task": what every later stage reads
    counts: dict  # format's meta.json and metrics "counts"
    bos: str  # the BOS and EOS strings the text was rendered with (pretokenize's specials)
    eos: str
    summary: str  # the stage's closing log line
