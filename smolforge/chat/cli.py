"""Chat with a trained model: interactive, or one question for scripts.

    python -m smolforge.chat.cli --model models/chat/gguf/model-q8_0.gguf
    python -m smolforge.chat.cli --model models/chat/hf --once "What are small tools good for?"
    python -m smolforge.chat.cli --model models/chat/hf --system "You are a patient teacher." --stop "\\n\\n"
    python -m smolforge.chat.cli --model models/chat/gguf/model-q8_0.gguf --tag Chat

The prompt is built with the chat template the model was trained with (see
smolforge/chat/talk.py); --system sets a persona context for the whole conversation (default:
the one training used, if any); --stop adds stop words to the model's own; --tag picks a
task tag of the task_tags style (default: the tag of the model's default task). A GGUF
opens at the model's own context length unless --n-ctx says otherwise. In the
interactive mode, /reset starts over and /quit (or Ctrl-D) leaves.
"""

from __future__ import annotations

import argparse
import sys

from smolforge.chat import talk
from smolforge.core.cli import run


def parse(argv: list[str] | None):
    ap = argparse.ArgumentParser(prog="smolforge-chat", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="train's HF directory or one of convert's .gguf files")
    ap.add_argument("--system", default=None, help="persona context (a system turn); '' for none")
    ap.add_argument("--stop", action="append", default=[], help="extra stop word (repeatable)")
    ap.add_argument(
        "--tag", default=None, help="task tag to prompt with (chat style task_tags), e.g. Chat or QA"
    )
    ap.add_argument("--once", metavar="TEXT", help="answer TEXT, print the reply, exit")
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--n-ctx", type=int, default=None, help="GGUF context window in tokens (default: the model's)"
    )
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    model = talk.load(args.model, args.threads, args.n_ctx)
    model.choose_tag(args.tag)
    system = model.default_system if args.system is None else args.system
    convo = talk.Conversation(system)
    stops = [s.encode().decode("unicode_escape") for s in args.stop]  # let users type \n

    def answer(text: str) -> str:
        reply = model.reply(convo.messages(text), args.max_new_tokens, args.temperature, stops)
        convo.add(text, reply)
        return reply

    if args.once is not None:
        print(answer(args.once))
        return
    print("smolforge chat: /reset starts over, /quit leaves", file=sys.stderr)
    while True:
        try:
            text = input("you> ").strip()
        except (EOFError, KeyboardInterrupt):
            print(file=sys.stderr)
            return
        if text in ("/quit", "/exit"):
            return
        if text == "/reset":
            convo = talk.Conversation(system)
            continue
        if text:
            print(f"bot> {answer(text)}")


def entry() -> None:
    raise SystemExit(run(main))


if __name__ == "__main__":
    entry()
