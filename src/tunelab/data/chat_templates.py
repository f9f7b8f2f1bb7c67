"""Chat templates a run can name (`prompt.chat_template`) instead of its tokenizer's own.

Base models often ship no chat template, and many instruct models' templates cannot render tools;
LLaMA-Factory's `template:` setting answers the same need. The built-ins are written for
transformers' Jinja environment (`trim_blocks`: a newline right after a tag is dropped, so newlines
after tags are written as `{{ '\\n' }}`). Their markers (`<|im_start|>`, `<|start_header_id|>`) are
plain text to a tokenizer that lacks them as tokens: the model learns them like any other text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import ConfigError

NL = "{{ '\\n' }}"

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}" + NL + "{{ m['content'] }}<|im_end|>" + NL + "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant" + NL + "{% endif %}"
)

# Hermes / Qwen2.5: the tools in the system turn, each call as <tool_call>{"name", "arguments"}</tool_call>,
# each result as <tool_response> in a user turn.
HERMES = (
    "{% if tools %}<|im_start|>system"
    + NL
    + "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}"
    + NL
    + NL
    + "{% endif %}You may call these tools:"
    + NL
    + "<tools>"
    + NL
    + "{% for t in tools %}{{ t | tojson }}"
    + NL
    + "{% endfor %}</tools>"
    + NL
    + 'Call one as <tool_call>{"name": NAME, "arguments": ARGS}</tool_call>.<|im_end|>'
    + NL
    + "{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and loop.first and tools %}"
    "{% elif m['role'] == 'assistant' %}<|im_start|>assistant" + NL + "{{ m['content'] or '' }}"
    "{% for c in m['tool_calls'] or [] %}<tool_call>"
    + NL
    + "{{ {'name': c['function']['name'], 'arguments': c['function']['arguments']} | tojson }}"
    + NL
    + "</tool_call>{% endfor %}<|im_end|>"
    + NL
    + "{% elif m['role'] == 'tool' %}<|im_start|>user"
    + NL
    + "<tool_response>"
    + NL
    + "{{ m['content'] }}"
    + NL
    + "</tool_response><|im_end|>"
    + NL
    + "{% else %}<|im_start|>{{ m['role'] }}"
    + NL
    + "{{ m['content'] }}<|im_end|>"
    + NL
    + "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant" + NL + "{% endif %}"
)

# Llama 3.1: header tokens around each role, the tools in the system turn, a call as the bare JSON
# {"name", "parameters"}, a result as an `ipython` turn.


def _header(role: str) -> str:
    return f"<|start_header_id|>{role}<|end_header_id|>" + NL + NL


LLAMA3 = (
    "{% if tools or messages[0]['role'] == 'system' %}"
    + _header("system")
    + "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% endif %}"
    "{% if tools %}" + NL + NL + "You may call these functions; answer a call as the JSON object "
    '{"name": function name, "parameters": arguments}.'
    + NL
    + "{% for t in tools %}{{ t | tojson }}"
    + NL
    + "{% endfor %}{% endif %}<|eot_id|>{% endif %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' and loop.first %}"
    "{% elif m['role'] == 'assistant' %}" + _header("assistant") + "{{ m['content'] or '' }}"
    "{% for c in m['tool_calls'] or [] %}"
    "{{ {'name': c['function']['name'], 'parameters': c['function']['arguments']} | tojson }}"
    "{% endfor %}<|eot_id|>"
    "{% elif m['role'] == 'tool' %}" + _header("ipython") + "{{ m['content'] }}<|eot_id|>"
    "{% else %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>" + NL + NL + "{{ m['content'] }}<|eot_id|>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}" + _header("assistant") + "{% endif %}"
)

BUILTIN = {"chatml": CHATML, "hermes": HERMES, "llama3": LLAMA3}
WITH_TOOLS = ("hermes", "llama3")


def chat_template_text(spec: str) -> str:
    """The Jinja text `prompt.chat_template` names: a built-in, or the contents of a file."""
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            [f"prompt.chat_template: {spec!r} is neither a built-in template ({', '.join(BUILTIN)}) nor a Jinja file"]
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError([f"prompt.chat_template: cannot read {path} ({type(e).__name__})"]) from None
    if "{%" not in text and "{{" not in text:
        raise ConfigError([f"prompt.chat_template: {path} holds no Jinja tags (not a chat template)"])
    return text


def use_chat_template(tokenizer: Any, spec: str | None) -> Any:
    """The tokenizer, rendering with the template `spec` names (None: its own); saved with it by save_pretrained."""
    if spec is not None:
        tokenizer.chat_template = chat_template_text(spec)
    return tokenizer
