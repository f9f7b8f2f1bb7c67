"""Conversation state for `tunelab chat`.

A model trained on `messages` data keeps the whole conversation (through the tokenizer's chat
template); a model trained on single instructions (alpaca, custom, text) is asked each line on its
own, since it never saw a conversation.
"""

from __future__ import annotations

from typing import Any

from tunelab.config.schema import PromptConfig
from tunelab.errors import TunelabError
from tunelab.inference.generate import encode_prompt
from tunelab.inference.prompts import chat_prompt


class ChatSession:
    def __init__(self, tokenizer: Any, prompt: PromptConfig, max_prompt_tokens: int, system: str | None = None):
        self.tokenizer = tokenizer
        self.prompt_cfg = prompt
        self.multi_turn = prompt.format == "messages"
        self.max_prompt_tokens = max_prompt_tokens
        self.system = system
        self.history: list[dict[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def ask(self, text: str) -> list[int]:
        """Record the user's message; the token ids of the prompt that asks for the answer.

        When the conversation outgrows `max_prompt_tokens`, the oldest turns are dropped (the
        system message stays); a single message too long on its own is an error.
        """
        if not self.multi_turn:
            self.history = []
        self.history.append({"role": "user", "content": text})
        while True:
            ids = encode_prompt(self.tokenizer, self._render())
            if len(ids) <= self.max_prompt_tokens:
                return ids
            if len(self.history) <= 1:
                self.history = []
                raise TunelabError(
                    f"the message is {len(ids)} tokens; the model takes at most {self.max_prompt_tokens} here"
                )
            # drop the oldest exchange (user + assistant)
            self.history = self.history[2:] if len(self.history) > 2 else self.history[1:]

    def answered(self, text: str) -> None:
        """Record the model's answer to the last message."""
        if self.multi_turn:
            self.history.append({"role": "assistant", "content": text})

    def _render(self) -> str:
        system = [{"role": "system", "content": self.system}] if self.system and self.multi_turn else []
        return chat_prompt(system + self.history, self.prompt_cfg, self.tokenizer)
