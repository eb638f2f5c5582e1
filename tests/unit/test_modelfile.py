"""smolforge.gguf.modelfile: chat templates measured into turn formats, Go templates and Modelfile text per style."""

from __future__ import annotations

import logging

import pytest

from smolforge.core import styles
from smolforge.core.card import Task
from smolforge.gguf import modelfile

# SmolLM2-135M-Instruct's own template: ChatML with a default system prompt
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SMOLLM2_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# the other styles as smolforge.core.styles renders them (copied, so the expected text is pinned here)
STYLES = {
    "plain": styles.template("plain"),
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
        "{% set t = tag if tag is defined and tag else 'Chat' %}"
        "{% for message in messages %}"
        "{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
        "{% elif message['role'] == 'user' %}{{ 'User: [' + t + '] ' + message['content'] + eos_token + '\n' }}"
        "{% else %}{{ 'Bot: [' + t + '] ' + message['content'] + eos_token + '\n' }}{% endif %}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'Bot: [' + t + ']' }}{% endif %}"
    ),
}

CHATS = [
    [{"role": "user", "content": "Why do essays need constraints?"}],
    [
        {"role": "system", "content": "You are Paul."},
        {"role": "user", "content": "Two lines\nof question  "},
        {"role": "assistant", "content": "An answer.\n\nIn two paragraphs."},
        {"role": "user", "content": "And then?"},
    ],
]


def jinja(template: str, messages: list[dict], bos: str = "<s>", eos: str = "</s>") -> str:
    """What transformers' apply_chat_template(..., add_generation_prompt=True) renders."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=messages, bos_token=bos, eos_token=eos, add_generation_prompt=True
    )


def read_modelfile(text: str) -> list[tuple[str, str]]:
    """(command, value) pairs as Ollama's parser (parser/parser.go) reads them: a value
    ends at a newline unless an opening `"` or `\"\"\"` is not yet closed; no escapes."""
    out, lines = [], iter(text.splitlines(keepends=True))
    for line in lines:
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, _, value = line.partition(" ")
        if name.upper() == "PARAMETER":
            name, _, value = value.partition(" ")
        quote = '"""' if value.startswith('"""') else '"' if value.startswith('"') else ""
        while quote and not (
            len(value.rstrip("\n")) >= 2 * len(quote) and value.rstrip("\n").endswith(quote)
        ):
            value += next(lines)
        value = value.rstrip("\n")
        out.append((name.lower(), value[len(quote) : len(value) - len(quote)] if quote else value))
    return out


# ---------------------------------------------------------------- measuring templates


def test_smollm2_chatml_is_measured_with_its_default_system():
    fmt = modelfile.describe(SMOLLM2, "<|im_start|>", "<|im_end|>")
    assert fmt == modelfile.TurnFormat(
        bos="",
        system=("<|im_start|>system\n", "<|im_end|>\n"),
        user=("<|im_start|>user\n", "<|im_end|>\n"),
        assistant=("<|im_start|>assistant\n", "<|im_end|>\n"),
        generation="<|im_start|>assistant\n",
        default_system=SMOLLM2_SYSTEM,
    )


@pytest.mark.parametrize(
    ("style", "bos", "user", "assistant", "generation"),
    [
        ("plain", "<s>", ("", "\n"), ("", "</s>"), ""),
        ("human_bot", "", ("<human> ", "</s>\n"), ("<bot> ", "</s>\n"), "<bot>"),
        ("chat_builder", "", ("= ", "\n"), ("# ", "\n"), "#"),
        ("task_tags", "", ("User: [Chat] ", "</s>\n"), ("Bot: [Chat] ", "</s>\n"), "Bot: [Chat]"),
    ],
)
def test_each_style_is_measured(style, bos, user, assistant, generation):
    fmt = modelfile.describe(STYLES[style], "<s>", "</s>")
    assert fmt == modelfile.TurnFormat(bos, ("", "\n"), user, assistant, generation, "")


@pytest.mark.parametrize("style", ["template", *STYLES])
def test_rendering_the_format_matches_the_template(style):
    template, bos, eos = (
        (SMOLLM2, "<|im_start|>", "<|im_end|>") if style == "template" else (STYLES[style], "<s>", "</s>")
    )
    fmt = modelfile.describe(template, bos, eos)
    for messages in CHATS:
        assert modelfile.render(fmt, messages) == jinja(template, messages, bos, eos)


def test_smolforge_chat_styles_all_fit():
    """Every style smolforge.core.styles knows measures cleanly (catches a style that drifts)."""
    for style in styles.STOP_WORDS:
        template = styles.style_template(style, SMOLLM2)
        fmt = modelfile.describe(template, "<s>", "</s>")
        assert modelfile.render(fmt, CHATS[1]) == jinja(template, CHATS[1])


@pytest.mark.parametrize(
    "template",
    [
        # Llama-2: the system text is folded into the first user turn
        "{% for m in messages %}{% if m['role'] == 'system' %}{% set s = m['content'] %}"
        "{% elif m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + ' </s>' }}{% endif %}{% endfor %}"
        "{% if messages|length > 1 %}{{ 'late' }}{% endif %}",
        # a turn's text depends on its position
        "{% for m in messages %}{{ loop.index|string + ': ' + m['content'] + '\n' }}{% endfor %}",
        "{{ raise_exception('no chats here') }}",
    ],
)
def test_templates_of_another_shape_are_refused(template):
    with pytest.raises(modelfile.TemplateShapeError):
        modelfile.describe(template, "<s>", "</s>")


def test_template_without_system_turn_still_renders_chats():
    template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
        "{% elif m['role'] == 'user' %}{{ 'Q: ' + m['content'] + '\n' }}{% else %}{{ 'A: ' + m['content'] + '\n' }}"
        "{% endif %}{% endfor %}{% if add_generation_prompt %}{{ 'A:' }}{% endif %}"
    )
    fmt = modelfile.describe(template)
    assert fmt.system is None and fmt.user == ("Q: ", "\n") and fmt.generation == "A:"
    assert "{{ if .System }}" not in modelfile.ollama_template(fmt)


# ---------------------------------------------------------------- Go templates and Modelfiles

CHATML_MODELFILE = '''# chat: written by smolforge's convert stage; load with: ollama create chat -f Modelfile
FROM ./model-q8_0.gguf
TEMPLATE """{{ if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ if $last }}<|im_start|>assistant
{{ end }}
{{- else if eq .Role "assistant" }}<|im_start|>assistant
{{ .Content }}
{{- if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- end }}"""
SYSTEM "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PARAMETER stop "<|im_end|>"
PARAMETER temperature 0.7
PARAMETER num_ctx 2048
'''


def chat_task(style: str, stop: list[str] | None = None, system: str = "") -> Task:
    """A chat model card's task (its chat_template field is training's; build is given the tokenizer's)."""
    return Task("chat", style, chat_template="", stop=stop or [], system=system, layout={})


def test_chatml_modelfile_text():
    task = chat_task("template", ["<|im_end|>"])
    text = modelfile.build(
        "model-q8_0.gguf", SMOLLM2, task, "<|im_start|>", "<|im_end|>", 0.7, 2048, name="chat"
    )
    assert text == CHATML_MODELFILE


def test_a_persona_replaces_the_default_system():
    task = chat_task("template", system='You are Paul "PG" Graham.')
    text = modelfile.build("m.gguf", SMOLLM2, task, "<|im_start|>", "<|im_end|>", 0.7, 512)
    assert dict(read_modelfile(text))["system"] == 'You are Paul "PG" Graham.'
    assert 'SYSTEM """You are Paul "PG" Graham."""' in text


@pytest.mark.parametrize(
    ("style", "template_text"),
    [
        (
            "plain",
            "<s>{{ if .System }}\n{{- .System }}\n{{ end }}\n"
            "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
            '{{- if eq .Role "user" }}\n{{- .Content }}\n{{ else if eq .Role "assistant" }}\n'
            "{{- .Content }}\n{{- if not $last }}</s>{{ end }}\n{{- end }}\n{{- end }}",
        ),
        (
            "human_bot",
            "{{ if .System }}\n{{- .System }}\n{{ end }}\n"
            "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
            '{{- if eq .Role "user" }}<human> {{ .Content }}</s>\n{{ if $last }}<bot>{{ end }}\n'
            '{{- else if eq .Role "assistant" }}<bot> {{ .Content }}\n'
            "{{- if not $last }}</s>\n{{ end }}\n{{- end }}\n{{- end }}",
        ),
        (
            "chat_builder",
            "{{ if .System }}\n{{- .System }}\n{{ end }}\n"
            "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
            '{{- if eq .Role "user" }}= {{ .Content }}\n{{ if $last }}#{{ end }}\n'
            '{{- else if eq .Role "assistant" }}# {{ .Content }}\n'
            "{{- if not $last }}\n{{ end }}\n{{- end }}\n{{- end }}",
        ),
        (
            "task_tags",
            "{{ if .System }}\n{{- .System }}\n{{ end }}\n"
            "{{- range $i, $_ := .Messages }}\n{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
            '{{- if eq .Role "user" }}User: [QA] {{ .Content }}</s>\n{{ if $last }}Bot: [QA]{{ end }}\n'
            '{{- else if eq .Role "assistant" }}Bot: [QA] {{ .Content }}\n'
            "{{- if not $last }}</s>\n{{ end }}\n{{- end }}\n{{- end }}",
        ),
    ],
)
def test_style_modelfiles(style, template_text):
    stops = {
        "plain": [],
        "human_bot": ["<human>", "<bot>"],
        "chat_builder": ["\n"],
        "task_tags": ["\nUser:", "\nBot:"],
    }
    assert stops == {k: v for k, v in styles.STOP_WORDS.items() if k in stops}
    task = chat_task(style, stops[style], "You are Paul.")
    # task_tags as format writes it for a model whose persona answers were trained under [QA]
    template = styles.style_template("task_tags", default_tag="QA") if style == "task_tags" else STYLES[style]
    text = modelfile.build("model-q8_0.gguf", template, task, "<s>", "</s>", 0.8, 256, name="chat")
    commands = read_modelfile(text)
    assert commands[0] == ("from", "./model-q8_0.gguf")
    assert ("template", template_text) in commands
    assert ("system", "You are Paul.") in commands
    # the style's stop words (a newline is a real newline inside quotes), then EOS
    assert [v for k, v in commands if k == "stop"] == [*stops[style], "</s>"]
    assert ("temperature", "0.8") in commands and ("num_ctx", "256") in commands
    if style == "chat_builder":
        assert 'PARAMETER stop "\n"\n' in text


def test_greedy_temperature_is_written_as_zero():
    text = modelfile.build("m.gguf", STYLES["plain"], chat_task("plain"), "<s>", "</s>", 0.0, 64)
    assert "PARAMETER temperature 0\n" in text and "SYSTEM" not in text


def test_unknown_template_gets_no_template_line_and_a_warning(caplog):
    numbered = "{% for m in messages %}{{ loop.index|string + ': ' + m['content'] + '\n' }}{% endfor %}"
    with caplog.at_level(logging.WARNING, logger="smolforge.gguf.modelfile"):
        text = modelfile.build("m.gguf", numbered, chat_task("template"), "<s>", "</s>", 0.7, 64)
    assert "TEMPLATE" not in text and "FROM ./m.gguf\n" in text and 'PARAMETER stop "</s>"' in text
    assert "no TEMPLATE line" in caplog.text and "'template'" in caplog.text


def test_no_chat_template_gets_no_template_line(caplog):
    with caplog.at_level(logging.WARNING, logger="smolforge.gguf.modelfile"):
        text = modelfile.build("m.gguf", None, chat_task("template"), None, None, 0.7, 64)
    assert text.splitlines()[1:] == ["FROM ./m.gguf", "PARAMETER temperature 0.7", "PARAMETER num_ctx 64"]
    assert "no chat template" in caplog.text


def test_unquotable_values_are_left_out_with_a_warning(caplog):
    task = chat_task("plain", ['say """', "ok"], 'a """ b')
    with caplog.at_level(logging.WARNING, logger="smolforge.gguf.modelfile"):
        text = modelfile.build("m.gguf", STYLES["plain"], task, "<s>", "</s>", 0.7, 64)
    assert [v for k, v in read_modelfile(text) if k == "stop"] == ["ok", "</s>"]
    assert "SYSTEM" not in text and caplog.text.count("three quotes") == 2


def test_params_check_values():
    assert modelfile.ModelfileParams("q8_0", temperature=-1.0, num_ctx=0).check() == [
        "temperature: expected >= 0, got -1.0",
        "num_ctx: expected >= 1 or auto, got 0",
    ]
    assert modelfile.ModelfileParams("f16", temperature=0.0, num_ctx=1).check() == []
    assert modelfile.ModelfileParams("f16", temperature=0.0, num_ctx="auto").check() == []


def test_num_ctx_auto_is_the_models_context_length():
    assert modelfile.ModelfileParams("f16", 0.7, "auto").context(1024) == 1024
    assert modelfile.ModelfileParams("f16", 0.7, 512).context(1024) == 512
    with pytest.raises(ValueError, match="num_ctx: 2048 exceeds the model's context length 1024"):
        modelfile.ModelfileParams("f16", 0.7, 2048).context(1024)


def test_braces_and_quotes_in_template_text_become_go_strings():
    fmt = modelfile.TurnFormat("", None, ('{"q": "', '"}\n'), ("", "\n"), "", "")
    go = modelfile.ollama_template(fmt)
    assert '{{ "{\\"q\\": \\"" }}' in go and '{{ "\\"}\\n" }}' in go
    assert '"""' not in go
