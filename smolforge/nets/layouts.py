"""Nets as chat examples: the two trace shapes and the trace checker used by evaluate.

The user turn is a net in text form; the assistant turn is its reduction. A *line* is
one state, followed by ` =` when more steps follow, so the last line is the answer:

    full: user "A D B"   assistant "D A B =\nD"       (every state after the input)
    step: user "A D B"   assistant "D A B ="          (one rewrite; evaluate iterates)
    pass: user "A B C D" assistant "EMPTY"            (every redex at once; iterated)

`full` and `step` follow a strategy (which redex first); `pass` needs none, since
redexes never overlap. A net already in normal form answers with itself ("B A" -> "B A").

Two options of the `pass` shape make every line a fixed-offset copy of the one before,
which is what lets a model trained on short nets reduce longer ones (docs/experiments.md):

    blanks:   an annihilated pair stays in the line as "_ _", so output symbol j is
              rewritten from input symbols j-1..j+1 ("A B D" -> "_ _ D")
    frame N:  the user turn is right-padded with "." to N symbols ("A D" -> "A D . . ."),
              so the answer starts N symbols after the input starts, whatever its length

A blanked line is read without its blanks: the next pass starts from the net itself; a
line of blanks alone stands for the empty net, which is written as one blank ("_"), so
every line of a blanked trace, prompt or answer, is made of symbols alone.

Two more make every answer symbol depend on its own neighbourhood alone:

    marks false: no ` =`; decoding stops at the first line that changes nothing, so a
              normal net's line is the net itself and is the last line of its trace
    pack:     a training line holds several states side by side, one "." between them,
              up to a width drawn at random for each line, at most the frame
              ("A B . D" -> "_ _ . D"), so lines run from one short net and many
              fills to a full frame; each is still a net of the training lengths.
              Prompts at evaluation hold one net, as always.
    border:   every line, prompt and answer, starts with one "." (". A D . ." ->
              ". D A"), so a net's first symbol has a left neighbour like every other
              symbol of a packed line, and is the same token as everywhere else
              (a BPE tokenizer writes a line's first symbol without its space)

The frame fixes the answer's offset only up to its width: a longer net shifts every
answer symbol away from its input. Interleaving removes the offset altogether:

    interleave: the training text writes each answer symbol right after the last input
              symbol it depends on, `BOS p_0 p_1 a_0 p_2 a_1 ... p_n a_{n-1} END a_n EOS`
              (p_0 and a_0 the borders, END a newline closing the input), so the inputs
              of every answer symbol sit 0, 2 and 4 tokens back whatever the net's
              length; evaluate feeds the input symbols and reads an answer symbol after
              each (smolforge.core.decode). Prompts are not padded (the frame only caps
              packed lines' width). The messages stay the readable user / assistant pair.
    spread N: interleaved packed training lines move each net but the first further on
              in position ids (random increasing jumps, up to N in all), so training
              meets distances between unrelated tokens as long as a long net's line
              has (evaluation itself always counts 0, 1, 2, ...)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

from smolforge.nets import reducer

TraceShape = Literal["full", "step", "pass"]
CONTINUES = " ="
BLANK = "_"  # the place of an annihilated symbol in a `blanks` line
FILL = "."  # pads a `frame` prompt
_REWRITE = dict(reducer.RULES)


@dataclass(frozen=True)
class Layout:
    """How nets are written as text: the one definition of the nets layout.

    format's params (`format.<model>.layout`), format's meta.json, pretokenize's meta.json
    and the model card all hold exactly these fields, copied as a whole (`asdict`), so a
    new field is added here and nowhere else. The pass-shape options (blanks, frame,
    marks, pack, border) apply to `trace: pass`; `effective()` drops them for the other
    shapes, so switching `trace` is one param.
    """

    blanks: bool = False  # an annihilated pair stays in the line as "_ _"
    frame: int = 0  # pad prompts with FILL to this many symbols (0: no padding)
    marks: bool = True  # ` =` after a line that more passes follow (false: stop at a fixpoint)
    pack: bool = False  # training lines hold several states (needs blanks, frame, no marks)
    border: bool = False  # every line starts with FILL
    trace: TraceShape = "pass"  # full: whole reduction | step: one rewrite | pass: every redex
    strategy: reducer.Strategy = "priority"  # which redex full and step rewrite first
    interleave: bool = False  # each answer symbol written right after its inputs (pass, training text)
    spread: int = 0  # interleaved packed training lines: nets spread over position ids up to this (0: none)

    @classmethod
    def read(cls, data: object, where: str, stage: str) -> Layout:
        """A layout recorded by `stage` in `where`; every field must be there (no defaults
        fill a missing one, so decoding never silently differs from training)."""
        from smolforge.core.cli import StageError, produced_by
        from smolforge.core.params import parse_params

        try:
            return parse_params(data, cls, "layout")
        except StageError as e:
            raise StageError(f"{where}: {e} {produced_by(stage)}") from None

    def check(self) -> list[str]:
        """What makes this layout unusable (pack needs aligned, unmarked lines)."""
        if self.frame < 0 or self.spread < 0:
            return [f"frame, spread: expected >= 0, got {self.frame}, {self.spread}"]
        errors = []
        if self.trace == "pass" and self.pack and not (self.blanks and self.frame > 0 and not self.marks):
            errors.append(
                "pack: needs blanks: true, frame > 0 and marks: false (a mark would speak for several nets)"
            )
        if self.trace != "pass":
            return errors  # the pass options do not apply (effective() drops them)
        if self.interleave and not (self.blanks and self.border and not self.marks):
            errors.append(
                "interleave: needs blanks: true, border: true and marks: false "
                "(answer symbol j must be written from input symbols j-1..j+1)"
            )
        if self.spread and not (self.interleave and self.pack):
            errors.append("spread: needs interleave: true and pack: true (it spreads a packed line's nets)")
        return errors

    def problems(self) -> list[str]:
        return self.check()

    def effective(self) -> Layout:
        """The layout as used: the pass options reset for the other trace shapes."""
        if self.trace == "pass":
            return self
        return Layout(trace=self.trace, strategy=self.strategy)

    @property
    def padded(self) -> bool:
        """Whether prompts are padded with FILL up to the frame (never when interleaved)."""
        return not self.interleave


PLAIN = Layout()


def line(state: str, marks: bool = True) -> str:
    """A state as one line of a trace: ` =` marks that more steps follow."""
    return reducer.to_text(state) + ("" if reducer.is_normal(state) or not marks else CONTINUES)


def full_answer(net: str, strategy: reducer.Strategy) -> str:
    """The assistant text of the full trace shape."""
    states = reducer.trace(net, strategy)
    return "\n".join(line(s) for s in states[1:]) if len(states) > 1 else reducer.to_text(net)


def step_answer(state: str, strategy: reducer.Strategy) -> str:
    """The assistant text of the one-rewrite shape: the next state's line."""
    i = reducer.redex(state, strategy)
    return line(state if i < 0 else reducer.rewrite_at(state, i))


def pass_answer(state: str, layout: Layout = PLAIN) -> str:
    """The assistant text of the parallel-pass shape: the state after one pass."""
    return bordered(pass_body(state, layout), layout)


def bordered(text: str, layout: Layout) -> str:
    return f"{FILL} {text}" if layout.border else text


def net_text(state: str, layout: Layout) -> str:
    """A net's symbols in a line: with blanks the empty net is one blank."""
    return BLANK if layout.blanks and not state else reducer.to_text(state)


def pass_body(state: str, layout: Layout) -> str:
    """One pass over `state`, without the line's border."""
    if layout.blanks and not state:
        return net_text(state, layout)  # the empty net answers itself
    after = reducer.parallel_step(state)
    if not layout.blanks or len(after) == len(state):
        return line(after, layout.marks)
    # the same pass, with each annihilated pair kept in place as two blanks
    out, i = [], 0
    while i < len(state):
        pair = state[i : i + 2]
        if pair in _REWRITE:
            out.append(_REWRITE[pair] or BLANK * 2)
            i += 2
        else:
            out.append(state[i])
            i += 1
    return " ".join("".join(out)) + ("" if reducer.is_normal(after) or not layout.marks else CONTINUES)


def packed(states: list[str], layout: Layout, rng: random.Random) -> Iterator[tuple[str, str]]:
    """(user, assistant) pairs holding `states` in order, as many a line as fit a width
    drawn from 1..frame for each line (the first always fits), one FILL between two; the
    empty net and nets longer than the frame get lines of their own.
    Each state's part of the answer is its own pass."""
    group: list[str] = []
    used, width = 0, rng.randint(1, layout.frame)  # symbols in the line so far, its width
    for state in states:
        if not state or len(state) > layout.frame:
            yield prompt(state, layout), pass_answer(state, layout)
            continue
        if group and used + 1 + len(state) > width:
            yield packed_line(group, used, layout)
            group, width = [], rng.randint(1, layout.frame)
        used = used + 1 + len(state) if group else len(state)
        group.append(state)
    if group:
        yield packed_line(group, used, layout)


def packed_line(group: list[str], used: int, layout: Layout) -> tuple[str, str]:
    """(user, assistant) of one packed line of `used` symbols."""
    user = f" {FILL} ".join(reducer.to_text(s) for s in group)
    return (
        bordered(" ".join([user] + [FILL] * (layout.frame - used) * layout.padded), layout),
        bordered(f" {FILL} ".join(pass_body(s, layout) for s in group), layout),
    )


def more_follow(text: str, before: str, after: str | None, layout: Layout) -> bool:
    """Whether decoding goes on after the line `text` (read as `after`) answered the
    prompt `before`: its mark says so, or, without marks, it changed something."""
    if layout.marks:
        return text.endswith(CONTINUES)
    return after is not None and after != before


def prompt(state: str, layout: Layout = PLAIN) -> str:
    """The user text for `state`: the net, then FILL up to the frame (with blanks the
    empty net is one blank)."""
    text = net_text(state, layout)
    pad = (layout.frame - max(len(state), 1)) * layout.padded
    return bordered(" ".join([text] + [FILL] * pad), layout)


def read_prompt(text: str) -> str | None:
    """The net in a user text (border and FILL padding dropped), or None when malformed."""
    parts = text.strip().split(" ")
    if len(parts) > 1 and parts[0] == FILL:  # a border: no net starts with FILL
        parts.pop(0)
    while len(parts) > 1 and parts[-1] == FILL:
        parts.pop()
    return "" if parts == [BLANK] else reducer.parse(" ".join(parts))


def read_line(text: str, layout: Layout = PLAIN) -> str | None:
    """The state a model's line stands for (its ` =` and, with blanks, its blanks
    dropped), or None when the line is malformed."""
    body = text[: -len(CONTINUES)] if text.endswith(CONTINUES) else text
    if layout.border:
        if not body.startswith(f"{FILL} "):
            return None
        body = body[2:]
    if layout.blanks and body.strip() != reducer.EMPTY:
        parts = body.strip().split(" ")
        if parts and all(p == BLANK for p in parts):  # every pair annihilated: the empty net
            return ""
        body = " ".join(p for p in parts if p != BLANK)
    return reducer.parse(body)


def reference_lines(
    net: str, shape: TraceShape, strategy: reducer.Strategy, layout: Layout = PLAIN
) -> list[str]:
    """The lines a perfect model writes for `net` (iterated shapes: one per round)."""
    if shape == "pass":
        states = reducer.parallel_trace(net)
        if not layout.marks:  # every state answers, the normal one with itself
            return [pass_answer(s, layout) for s in states]
        return (
            [pass_answer(s, layout) for s in states[:-1]] if len(states) > 1 else [pass_answer(net, layout)]
        )
    return full_answer(net, strategy).split("\n")


def examples(
    net: str, shape: TraceShape, strategy: reducer.Strategy, layout: Layout = PLAIN
) -> Iterator[tuple[str, str]]:
    """(user, assistant) pairs for one net: one for `full`, one per state for `step` and
    `pass` (including the final normal state, which teaches the model when to stop)."""
    if shape == "full":
        yield reducer.to_text(net), full_answer(net, strategy)
    elif shape == "step":
        for state in reducer.trace(net, strategy):
            yield reducer.to_text(state), step_answer(state, strategy)
    else:
        for state in reducer.parallel_trace(net):
            yield prompt(state, layout), pass_answer(state, layout)


def messages(user: str, assistant: str) -> list[dict]:
    """The OpenAI messages shape of one example."""
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


@dataclass
class Verdict:
    """The checker's reading of a model's trace for one net."""

    answer: str | None  # the model's final state (compact form), None when unreadable
    correct: bool  # final answer equals the true normal form
    valid: bool  # every line a legal rewrite, ends normal, right step count
    exact: bool  # the same lines the reference strategy writes
    failure: str | None  # None, "malformed", "wrong_rewrite", "stopped_early", "looped"
    states: list[str] = field(default_factory=list)


def check_trace(
    net: str,
    lines: list[str],
    shape: TraceShape,
    strategy: reducer.Strategy,
    looped: bool,
    layout: Layout = PLAIN,
) -> Verdict:
    """Judge the model's output lines for `net` with the exact reducer alone.

    `lines` are the states the model wrote after the input (the iterated outputs of
    `step` / `pass`, or the `full` shape's lines); `looped` says decoding hit its step
    limit. A `pass` line may rewrite any non-empty set of redexes at once; the others
    exactly one. With blanks, a line is judged by the state it stands for; where its
    blanks sit counts only for the exact match. Without marks, the last line repeats
    the normal net before it (that is how the model says it is done).
    """
    truth = reducer.reduce(net)
    reference = reference_lines(net, shape, strategy, layout)
    states, failure, prev = [], None, net
    for i, text in enumerate(lines):
        state = read_line(text, layout)
        if state is None:
            failure = "malformed"
            break
        states.append(state)
        last = i == len(lines) - 1
        if layout.marks:
            identity = i == 0 and last and state == net and reducer.is_normal(net)
        else:
            identity = last and state == prev and reducer.is_normal(prev)
        legal = (
            reducer.is_parallel_rewrite(prev, state) if shape == "pass" else state in reducer.successors(prev)
        )
        if not identity and not legal:
            failure = failure or "wrong_rewrite"
        prev = state
    answer = states[-1] if states and failure != "malformed" else None
    if failure is None and looped:
        failure = "looped"
    if failure is None and (answer is None or not reducer.is_normal(answer)):
        failure = "stopped_early"
    # one rewrite a line, except `pass`, whose rewrites total truth.steps whenever every
    # line is legal and the last is normal (all rewrite orders take the same steps)
    steps_ok = shape == "pass" or len(states) == max(truth.steps, 1)
    correct = answer == truth.normal_form and failure != "looped"
    valid = failure is None and steps_ok and correct
    return Verdict(answer, correct, valid, lines == reference, failure, states)


def context_needed(n: int, layout: Layout) -> int:
    """Positions one decoding round of a net of `n` symbols needs (prompt and answer,
    BOS to EOS, one token per symbol and mark): what must fit the model's context."""
    width = max(n, 1) + layout.border
    if layout.trace == "pass":
        if layout.interleave:
            return 1 + 1 + 2 * width + 1  # BOS, p_0, (p_{j+1}, a_j) for each answer symbol, EOS
        prompt_width = max(width, layout.frame + layout.border) if layout.padded else width
        return 1 + prompt_width + 1 + width + layout.marks + 1
    if layout.trace == "step":
        return 1 + n + 1 + n + 1 + 1
    return 1 + n + 1 + (reducer.max_steps(n) + 1) * (n + 2) + 1  # every line of the full trace


def longest_fitting(layout: Layout, n_ctx: int) -> int:
    """The longest net whose decoding fits `n_ctx` positions (0: none)."""
    n = 0
    while context_needed(n + 1, layout) <= n_ctx:
        n += 1
    return n


END = "\n"  # closes an interleaved input: the right border of its last symbol


def symbol_texts(line: str) -> list[str]:
    """A line's symbols as the interleaved text writes them: the first bare, the others
    after a space (as a BPE tokenizer sees them in a line)."""
    words = line.split(" ")
    return [words[0]] + [f" {w}" for w in words[1:]]


def interleaved_segments(user: str, assistant: str, bos: str, eos: str) -> list[tuple[str, bool]]:
    """The training segments `BOS p_0 p_1 a_0 ... END a_n EOS` of an interleaved example;
    the answer symbols and EOS are the targets."""
    prompt = symbol_texts(user) + [END]
    answer = [f" {w}" for w in assistant.split(" ")]
    if len(prompt) != len(answer) + 1:
        raise ValueError(f"an interleaved answer needs one symbol per input symbol: {user!r} -> {assistant!r}")
    segments = [(bos, False), (prompt[0], False)]
    for j, a in enumerate(answer):
        segments += [(prompt[j + 1], False), (a, True)]
    return segments + [(eos, True)]
