"""The run's prompt format for engines that load GGUF files, and the Ollama Modelfile that carries it.

Two template languages are written from the one prompt format the run was trained with:

- a Jinja chat template for the GGUF's `tokenizer.chat_template`, which llama-server, llama-cli,
  LM Studio and llama-cpp-python render for chat requests;
- a Go template for the Modelfile's TEMPLATE, which Ollama renders.

Single-instruction formats (alpaca, custom templates that one instruction fills, text) are asked
the way `tunelab chat` asks them: the last user message alone, through the run's template. For
alpaca that is the no-input variant, the one a chat user gets (the with-input variant needs a
second field no chat message has). The template text is taken from tunelab's own rendering of a
placeholder instruction, so it is the training template byte for byte. `messages` runs keep their
tokenizer's chat template; its Go translation is written for ChatML (tunelab's tiny models, Qwen,
many fine-tunes), and for other templates the Modelfile says that Ollama will pick its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from tunelab.config.schema import PromptConfig
from tunelab.errors import TunelabError
from tunelab.inference.prompts import instruction_row, prompt_text

_PLACEHOLDER = "\x00INSTRUCTION\x00"
CHATML_GO = "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"


@dataclass
class EnginePrompt:
    """The prompt format in the engines' template languages, and where each comes from."""

    format: str  # a short description for the Modelfile and the output
    chat_template: str | None  # Jinja, for the GGUF's tokenizer.chat_template (None: write none)
    go_template: str | None  # Go, for the Modelfile's TEMPLATE (None: no TEMPLATE line)
    stops: list[str]  # token texts that end an answer
    notes: list[str] = field(default_factory=list)


def single_turn(cfg: PromptConfig, tokenizer: Any) -> tuple[str, str] | None:
    """The literal text before and after the instruction in the run's single-instruction template,
    or None when one instruction cannot fill it (a custom template with several required fields)."""
    try:
        text = prompt_text(instruction_row(_PLACEHOLDER, "", cfg), cfg, tokenizer)
    except TunelabError:
        return None
    if text.count(_PLACEHOLDER) != 1:
        return None
    before, after = text.split(_PLACEHOLDER)
    return before, after


def engine_prompt(cfg: PromptConfig, tokenizer: Any, stop_ids: list[int]) -> EnginePrompt:
    stops = [t for t in tokenizer.convert_ids_to_tokens(stop_ids) if t]
    if cfg.format == "messages":
        return _chat_prompt(tokenizer, stops)
    parts = single_turn(cfg, tokenizer)
    what = {
        "alpaca": "alpaca (the no-input variant: one chat message is the instruction)",
        "text": "text (the message as it is)",
    }
    desc = what.get(cfg.format, f"{cfg.format} template, the last user message as the instruction")
    if parts is None:
        return EnginePrompt(
            f"{cfg.format} template",
            None,
            None,
            stops,
            [
                "the run's prompt template needs more fields than one chat message fills: no chat template or "
                "TEMPLATE was written; send fully rendered prompts (llama-cli -p, Ollama's raw mode)"
            ],
        )
    before, after = parts
    # BOS as the template's first text when the tokenizer adds one: llama.cpp (llama-server, llama-cli, LM
    # Studio) strips a leading BOS from the rendered prompt and adds its own, llama-cpp-python tokenizes the
    # rendered prompt without adding one; either way the model sees one BOS, as tunelab's encode_prompt gives it.
    bos = "{{ bos_token }}" if _adds_bos(tokenizer) else ""
    jinja = (
        bos + "{% for message in messages %}{% if loop.last and message['role'] == 'user' %}"
        f"{_jinja_literal(before)}{{{{ message['content'] }}}}{_jinja_literal(after)}{{% endif %}}{{% endfor %}}"
    )
    # Over .Messages, not .Prompt: Ollama renders a .Prompt template once per earlier turn and joins them,
    # which a model trained on single instructions never saw. This one renders the last message only.
    go = (
        '{{- range $i, $m := .Messages }}{{ if and (eq $m.Role "user") (eq (len (slice $.Messages $i)) 1) }}'
        f"{_go_literal(before)}{{{{ $m.Content }}}}{_go_literal(after)}{{{{ end }}}}{{{{ end }}}}"
    )
    notes = [
        "each chat message is asked on its own, as `tunelab chat` asks a single-instruction model: "
        "earlier turns are not shown to the model"
    ]
    return EnginePrompt(desc, jinja, go, stops, notes)


def _chat_prompt(tokenizer: Any, stops: list[str]) -> EnginePrompt:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        return EnginePrompt(
            "messages, but the tokenizer has no chat template",
            None,
            None,
            stops,
            ["the tokenizer has no chat template: engines will use their default format"],
        )
    if is_chatml(tokenizer):
        return EnginePrompt(
            "messages (ChatML chat template)",
            template,
            CHATML_GO,
            [*stops, *(["<|im_end|>"] if "<|im_end|>" not in stops else [])],
        )
    return EnginePrompt(
        "messages (the tokenizer's chat template)",
        template,
        None,
        stops,
        [
            "the chat template is not ChatML, so the Modelfile has no TEMPLATE: Ollama picks one from the GGUF's "
            "chat template when it knows it; check with `ollama show NAME --template`"
        ],
    )


def is_chatml(tokenizer: Any) -> bool:
    """Whether the tokenizer's chat template renders conversations exactly as ChatML does."""
    probes = [
        [{"role": "user", "content": "U1"}],
        [
            {"role": "system", "content": "S"},
            {"role": "user", "content": "U1"},
            {"role": "assistant", "content": "A1"},
            {"role": "user", "content": "U2"},
        ],
    ]
    for messages in probes:
        want = (
            "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
            + "<|im_start|>assistant\n"
        )
        try:
            if tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) != want:
                return False
        except Exception:  # a template that raises on a probe (e.g. no system role) is not ChatML
            return False
    return True


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a").input_ids[:1] == [bos]


def _jinja_literal(text: str) -> str:
    return f"{{% raw %}}{text}{{% endraw %}}" if any(m in text for m in ("{{", "{%", "{#")) else text


def _go_literal(text: str) -> str:
    return text.replace("{{", '{{ "{{" }}')


def modelfile(gguf_file: str, prompt: EnginePrompt, name: str) -> str:
    """An Ollama Modelfile next to `gguf_file` (relative: Ollama resolves FROM against the Modelfile's folder)."""
    lines = [
        f"# Ollama Modelfile for {name}, written by `tunelab export --format gguf`.",
        f"# Prompt format: {prompt.format}.",
        f"# Use it: ollama create {name} -f Modelfile && ollama run {name}",
        *[f"# Note: {n}" for n in prompt.notes],
        f"FROM ./{gguf_file}",
    ]
    if prompt.go_template is not None:
        if '"""' in prompt.go_template:
            raise TunelabError('the prompt template contains """, which a Modelfile TEMPLATE cannot hold')
        lines.append(f'TEMPLATE """{prompt.go_template}"""')
    lines += [f"PARAMETER stop {json.dumps(s)}" for s in prompt.stops]
    # tunelab's generate / chat / serve decode greedily by default; Ollama would sample at 0.8.
    lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"
