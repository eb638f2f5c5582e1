"""Ollama Modelfiles: a GGUF file plus its chat template in Ollama's Go-template syntax,
stop words, persona and sampling defaults, so `ollama create NAME -f Modelfile` gives a
model that builds prompts exactly as training rendered chats.

The Jinja chat template is not translated. It is measured: rendering a few probe chats
(with sentinel contents) through it shows the literal text around each role's turn, a
`TurnFormat`, which is then checked by rendering other chats both ways. Every style
smolforge renders fits that shape (the base tokenizer's ChatML with its default system
prompt, plain, human_bot, chat_builder, task_tags); a template that does not (text that
depends on a turn's position or content) gets no TEMPLATE line and a warning.

Modelfile syntax (Ollama's parser/parser.go): one command a line; a value in double
quotes, or in three of them when it holds a quote, may span lines; there are no escapes,
so a newline in a stop word is a real newline inside the quotes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Literal

from smolforge.core.card import Task
from smolforge.gguf.export import FileType

log = logging.getLogger(__name__)

_TAG = "q7Zx"  # makes the probe contents unlikely to occur in any template text
_S, _U1, _A1, _U2 = (f"{r}{_TAG}" for r in ("SYS", "USERONE", "ANSWER", "USERTWO"))

# chats rendered both ways to check a TurnFormat: multi-line text, spaces at the ends
_CHECKS = [
    [("user", "Hi there")],
    [("system", "Be brief."), ("user", "What is a tree?\nIn one line.")],
    [("user", "One"), ("assistant", " Two "), ("user", "Three\n\nFour")],
    [
        ("system", "You are Paul."),
        ("user", "a"),
        ("assistant", "b"),
        ("user", "c"),
        ("assistant", "d"),
        ("user", "e"),
    ],
]


@dataclass(frozen=True)
class ModelfileParams:
    """params.yaml convert.<model>.modelfile."""

    file_type: FileType  # the GGUF file the Modelfile's FROM names
    temperature: float
    num_ctx: int | Literal["auto"]  # Ollama's context window; auto: the model's context length

    def check(self) -> list[str]:
        errors = [] if self.temperature >= 0 else [f"temperature: expected >= 0, got {self.temperature}"]
        if self.num_ctx != "auto" and self.num_ctx < 1:
            errors.append(f"num_ctx: expected >= 1 or auto, got {self.num_ctx}")
        return errors

    def context(self, model_ctx: int) -> int:
        """The num_ctx to write for a model trained at `model_ctx` tokens (ValueError: too long)."""
        if self.num_ctx == "auto":
            return model_ctx
        if self.num_ctx > model_ctx:
            raise ValueError(f"num_ctx: {self.num_ctx} exceeds the model's context length {model_ctx}")
        return self.num_ctx


class TemplateShapeError(ValueError):
    """The chat template is not literal text around each turn, so no Go template is written."""


@dataclass(frozen=True)
class TurnFormat:
    """The literal text a chat template puts around each turn."""

    bos: str  # once, before everything
    system: tuple[str, str] | None  # (before, after) the system text; None: no system turn
    user: tuple[str, str]
    assistant: tuple[str, str]  # for answers already in the chat
    generation: str  # after the last user turn: the start of the answer to generate
    default_system: str  # what the template says as system when a chat has none ('')


# ---------------------------------------------------------------- measuring a template


def _jinja(template: str, bos: str, eos: str):
    """`(messages, add_generation_prompt) -> text` with transformers' Jinja settings."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise TemplateShapeError(f"the template raised: {message}")

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"]
    )
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def render(turns: list[tuple[str, str]], gen: bool = False) -> str:
        messages = [{"role": r, "content": c} for r, c in turns]
        try:
            return compiled.render(messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=gen)
        except TemplateShapeError:
            raise
        except Exception as e:  # any template error means the shape is not ours
            raise TemplateShapeError(
                f"the template failed on a probe chat ({type(e).__name__}: {e})"
            ) from None

    return render


def _split(text: str, sentinel: str) -> tuple[str, str]:
    if text.count(sentinel) != 1:
        raise TemplateShapeError(f"a message's text appears {text.count(sentinel)} times in its rendering")
    before, _, after = text.partition(sentinel)
    return before, after


def _after(text: str, prefix: str, what: str) -> str:
    if not text.startswith(prefix):
        raise TemplateShapeError(f"adding {what} changes the text rendered before it")
    return text[len(prefix) :]


def _cut_end(text: str, end: str, what: str) -> str:
    if not text.endswith(end):
        raise TemplateShapeError(f"{what} does not end with {end!r} as the other probe chats say")
    return text[: len(text) - len(end)]


def describe(template: str, bos: str = "", eos: str = "") -> TurnFormat:
    """Measure `template` (Jinja, as in tokenizer_config.json) into a checked TurnFormat.

    Raises TemplateShapeError when the template is not literal text around each turn.
    """
    r = _jinja(template, bos, eos)
    one = r([("user", _U1)])
    lead, user_after = _split(one, _U1)
    generation = _after(r([("user", _U1)], gen=True), one, "the generation prompt")
    two = r([("user", _U1), ("assistant", _A1)])
    assistant = _split(_after(two, one, "an answer"), _A1)
    user_before, again = _split(
        _after(r([("user", _U1), ("assistant", _A1), ("user", _U2)]), two, "a turn"), _U2
    )
    if again != user_after:
        raise TemplateShapeError("the first and a later user turn end differently")
    lead = _cut_end(lead, user_before, "the chat's start")  # BOS, maybe a default system turn
    fmt = TurnFormat(lead, None, (user_before, user_after), assistant, generation, "")
    try:
        fmt = _with_system(r, fmt, two)
    except TemplateShapeError as e:
        log.debug("no system turn: %s", e)
    _check(fmt, r)
    return fmt


def _with_system(r, fmt: TurnFormat, two: str) -> TurnFormat:
    """Find the text around a system turn, and any default system text in `fmt.bos`."""
    sys_lead, rest = _split(r([("system", _S), ("user", _U1)]), _S)  # BOS + system prefix
    system_after = _cut_end(_split(rest, _U1)[0], fmt.user[0], "the system turn")
    if sys_lead.startswith(fmt.bos):  # a chat without system starts with BOS alone
        return replace(fmt, system=(sys_lead[len(fmt.bos) :], system_after))
    # the template adds a default system turn: a later system turn shows the prefix alone
    later = r([("user", _U1), ("assistant", _A1), ("system", _S), ("user", _U2)])
    system_before = _split(_after(later, two, "a system turn"), _S)[0]
    bos = _cut_end(sys_lead, system_before, "BOS")
    default = _after(fmt.bos, bos + system_before, "the default system turn")
    default = _cut_end(default, system_after, "the default system text")
    return replace(fmt, bos=bos, system=(system_before, system_after), default_system=default)


def _check(fmt: TurnFormat, r) -> None:
    for chat in _CHECKS:
        if fmt.system is None and any(role == "system" for role, _ in chat):
            continue
        want = r(chat, gen=True)
        got = render(fmt, [{"role": a, "content": b} for a, b in chat])
        if got != want:
            at = next((i for i, (x, y) in enumerate(zip(got, want)) if x != y), min(len(got), len(want)))
            raise TemplateShapeError(
                f"measured turns render {got[at : at + 30]!r} where the template has {want[at : at + 30]!r}"
            )


# ---------------------------------------------------------------- rendering


def render(fmt: TurnFormat, messages: list[dict]) -> str:
    """A chat as Ollama builds its prompt with `ollama_template(fmt)`: every system text
    first (or the default), then the turns, then the generation prompt after a last user turn."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or fmt.default_system
    out = [fmt.bos]
    if system and fmt.system:
        out += [fmt.system[0], system, fmt.system[1]]
    turns = [m for m in messages if m["role"] in ("user", "assistant")]
    for i, m in enumerate(turns):
        last = i == len(turns) - 1
        before, after = fmt.user if m["role"] == "user" else fmt.assistant
        out += [before, m["content"]]
        if m["role"] == "user":
            out += [after, fmt.generation if last else ""]
        elif not last:  # Ollama continues a last answer rather than closing it
            out.append(after)
    return "".join(out)


def ollama_template(fmt: TurnFormat) -> str:
    """`fmt` as an Ollama Go template over `.System` and `.Messages` (the form of Ollama's
    own library templates)."""
    parts = [fmt.bos]
    if fmt.system:
        parts += ["{{ if .System }}", fmt.system[0], "{{ .System }}", fmt.system[1], "{{ end }}"]
    parts += ["{{ range $i, $_ := .Messages }}", "{{ $last := eq (len (slice $.Messages $i)) 1 }}"]
    parts += ['{{ if eq .Role "user" }}', fmt.user[0], "{{ .Content }}", fmt.user[1]]
    if fmt.generation:
        parts += ["{{ if $last }}", fmt.generation, "{{ end }}"]
    parts += ['{{ else if eq .Role "assistant" }}', fmt.assistant[0], "{{ .Content }}"]
    if fmt.assistant[1]:
        parts += ["{{ if not $last }}", fmt.assistant[1], "{{ end }}"]
    parts += ["{{ end }}", "{{ end }}"]
    return _join(parts)


def _join(parts: list[str]) -> str:
    """Actions and literal text (even indexes need not be either) joined into one template.

    Two actions in a row go on separate lines, the second opening with `{{-`, which trims
    exactly that newline; an action right after literal text never trims, since the text
    may end in a newline that belongs to the chat.
    """
    out: list[str] = []
    prev_action = False
    for part in parts:
        if not part:
            continue
        is_action = part.startswith("{{ ") and part.endswith(" }}")
        if not is_action:
            part = _go_text(part)
            is_action = part.startswith("{{ ")
        elif prev_action:
            part = "\n{{-" + part[2:]
        out.append(part)
        prev_action = is_action
    return "".join(out)


_GO_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def _go_text(text: str) -> str:
    """Literal template text; text with braces or quotes becomes a Go string action, so it
    can neither open an action nor close the Modelfile's triple quotes."""
    if not any(c in text for c in '{}"'):
        return text
    return '{{ "' + "".join(_GO_ESCAPES.get(c, c) for c in text) + '" }}'


# ---------------------------------------------------------------- the Modelfile


def _quote(value: str) -> str:
    """A Modelfile value, quoted the way Ollama's parser reads it back unchanged."""
    if '"""' in value:
        raise ValueError(f"{value!r} holds three quotes in a row, which a Modelfile cannot")
    return f'"""{value}"""' if '"' in value else f'"{value}"'


def build(
    gguf_file: str,
    chat_template: str | None,
    task: Task,
    bos: str | None,
    eos: str | None,
    temperature: float,
    num_ctx: int,
    name: str = "model",
) -> str:
    """The Modelfile text for `gguf_file` (a name beside the Modelfile).

    task: the model card's task (its chat style names the template in warnings; its stop
    words and persona `system` become PARAMETER stop and SYSTEM); eos is also a stop
    word, so a style whose stop words are '' still ends at EOS.
    """
    lines = [
        f"# {name}: written by smolforge's convert stage; load with: ollama create {name} -f Modelfile",
        f"FROM ./{gguf_file}",
    ]
    fmt = _turn_format(chat_template, task, bos or "", eos or "")
    if fmt is not None:
        lines.append(f'TEMPLATE """{ollama_template(fmt)}"""')
    system = task.system or (fmt.default_system if fmt else "")
    if system and (fmt is None or fmt.system is None):
        log.warning("Modelfile: no SYSTEM line: the chat template has no system turn for %r", system)
    elif system:
        lines += _quoted("SYSTEM", system)
    for stop in dict.fromkeys([*task.stop, *([eos] if eos else [])]):
        lines += _quoted("PARAMETER stop", stop) if stop else []
    lines += [f"PARAMETER temperature {temperature:g}", f"PARAMETER num_ctx {num_ctx}"]
    return "\n".join(lines) + "\n"


def _quoted(command: str, value: str) -> list[str]:
    try:
        return [f"{command} {_quote(value)}"]
    except ValueError as e:
        log.warning("Modelfile: no %s line: %s", command, e)
        return []


def _turn_format(chat_template: str | None, task: Task, bos: str, eos: str) -> TurnFormat | None:
    style = task.chat_style
    if not chat_template:
        log.warning("Modelfile: no TEMPLATE line (the tokenizer has no chat template)")
        return None
    try:
        fmt = describe(chat_template, bos, eos)
        _quote(ollama_template(fmt))
    except (TemplateShapeError, ValueError) as e:
        log.warning(
            "Modelfile: no TEMPLATE line: chat style %r is not one Ollama can be given (%s)", style, e
        )
        return None
    return fmt
