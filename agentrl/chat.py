"""The chat format and the token-stream conventions the runner uses (docs/design.md section 2).

The format is ChatML with tool calls the way Qwen2.5 writes them: messages are
``<|im_start|>{role}\\n{content}<|im_end|>\\n``; the tools are listed as JSON schemas inside
``<tools></tools>`` in the system message; an assistant calls a tool with
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``; tool results come back as
``<tool_response>\\n...\\n</tool_response>`` blocks inside one user turn (consecutive tool messages share
that turn); the generation prompt is ``<|im_start|>assistant\\n``. ``CHAT_TEMPLATE`` is that format as a
Jinja template, written for this project; the default tiny models ship with it.

The token stream of one context window is built piece by piece, never by re-tokenising decoded text:

    prompt_ids(system, tools, task)            system + user task + ``<|im_start|>assistant\\n``
    sampled ids, kept exactly as sampled       the action, ending with the stop token ``<|im_end|>``
    observation_ids(step observation)          ``\\n`` + tool/user messages + ``<|im_start|>assistant\\n``
    sampled ids ...

The stop token ``<|im_end|>`` is sampled by the policy, so it is a policy token (loss mask 1): the model
learns when to stop. An observation therefore starts with the ``\\n`` that follows ``<|im_end|>`` in the
template. A turn cut off by the token limit has no stop token; its observation then starts by closing the
turn with ``<|im_end|>`` (a template token, loss mask 0).

Why the pieces concatenate to exactly what ``tokenizer.apply_chat_template`` gives for the whole
conversation (tested on the built-in environments' expert episodes): every observation starts right after
a special token, so no BPE merge crosses its start; and every prompt or observation ends in the newline of
``<|im_start|>assistant\\n``, which Qwen2's pre-tokeniser (used by the default models) keeps apart from
whatever follows unless that starts with more whitespace holding a newline. For such an action (one that
starts with a blank line) the stream can differ from the canonical tokenisation; that is harmless for
training, since the stream is both what was sampled and what is scored.

This module needs only a tokenizer, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from agentrl.types import Message

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
TAG_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")
GENERATION_PROMPT = f"{IM_START}assistant\n"

# trim_blocks/lstrip_blocks are on in transformers' Jinja environment, so a newline right after a
# block tag is dropped: every newline that reaches the output is written as an explicit "\n" string.
CHAT_TEMPLATE = """\
{%- if messages and messages[0].role == 'system' %}
{%- set system_content = messages[0].content %}
{%- set rest = messages[1:] %}
{%- else %}
{%- set system_content = none %}
{%- set rest = messages %}
{%- endif %}
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if system_content %}
{{- system_content + '\\n\\n' }}
{%- endif %}
{{- '# Tools\\n\\nYou can call the functions whose JSON schemas are listed inside'
    + ' <tools></tools>:\\n<tools>' }}
{%- for tool in tools %}
{{- '\\n' + (tool | tojson) }}
{%- endfor %}
{{- '\\n</tools>\\n\\nTo call one, write its name and arguments as a JSON object inside'
    + ' <tool_call></tool_call> tags:\\n<tool_call>\\n'
    + '{"name": <function-name>, "arguments": <args-json-object>}\\n</tool_call>'
    + '<|im_end|>\\n' }}
{%- elif system_content is not none %}
{{- '<|im_start|>system\\n' + system_content + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in rest %}
{%- if message.role == 'user' or message.role == 'system' %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- elif message.role == 'assistant' %}
{{- '<|im_start|>assistant\\n' }}
{%- generation %}
{{- message.content if message.content is string else '' }}
{%- for call in (message.tool_calls or []) %}
{%- set call = call.function if call.function is defined else call %}
{%- if not loop.first or message.content %}
{{- '\\n' }}
{%- endif %}
{{- '<tool_call>\\n{"name": "' + call.name + '", "arguments": ' }}
{{- call.arguments if call.arguments is string else (call.arguments | tojson) }}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>' }}
{%- endgeneration %}
{{- '\\n' }}
{%- elif message.role == 'tool' %}
{%- if loop.first or loop.previtem.role != 'tool' %}
{{- '<|im_start|>user' }}
{%- endif %}
{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}
{%- if loop.last or loop.nextitem.role != 'tool' %}
{{- '<|im_end|>\\n' }}
{%- endif %}
{%- else %}
{{- raise_exception('unknown message role: ' + message.role) }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""


def message_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    """``Message`` records as the ``{"role", "content"}`` dicts chat templates take."""
    return [{"role": m.role, "content": m.content} for m in messages]


class ChatFormat:
    """Builds the token stream of one context window from a tokenizer with a ChatML chat template.

    Only the tokenizer's ``apply_chat_template(..., tokenize=False)``, ``encode``, ``decode`` and
    ``convert_tokens_to_ids`` are used, so any Hugging Face tokenizer of a ChatML model fits (the
    defaults from ``agentrl.models``, Qwen2.5 instruct tokenizers).
    """

    def __init__(self, tokenizer: Any) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("tokenizer: has no chat template")
        self.tokenizer = tokenizer
        self.im_end_id = self._token_id(IM_END)
        self.stop_token_ids: tuple[int, ...] = (self.im_end_id, self._token_id(ENDOFTEXT))
        # What the template writes after an assistant turn's <|im_end|>: the start of every observation.
        probe = self.render([Message("user", "u"), Message("assistant", "a")])
        self._after_im_end = probe[probe.rindex(IM_END) + len(IM_END) :]
        self._anchor_text = probe

    def _token_id(self, token: str) -> int:
        ids = self.tokenizer.encode(token, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(
                f"tokenizer: {token!r} is not a single token; the chat format needs ChatML tokens"
            )
        return ids[0]

    def render(
        self,
        messages: Sequence[Message],
        tools: Sequence[Mapping[str, Any]] | None = None,
        *,
        add_generation_prompt: bool = False,
    ) -> str:
        """The chat template applied to ``messages`` (and the tool schemas), as text."""
        return self.tokenizer.apply_chat_template(
            message_dicts(messages),
            tools=[dict(t) for t in tools] if tools else None,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings in it become their special tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``, special tokens included, with no clean-up: ``decode(encode(s)) == s``."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def prompt_ids(self, system: str, tools: Sequence[Mapping[str, Any]], task: str) -> list[int]:
        """Ids that open a context window: system prompt with the tools, task, generation prompt."""
        return self.context_ids(system, tools, [Message("user", task)])

    def context_ids(
        self, system: str, tools: Sequence[Mapping[str, Any]], messages: Sequence[Message]
    ) -> list[int]:
        """Ids that open a context window from whole messages: system prompt with the tools, ``messages``,
        generation prompt. A window resumed after a compaction starts this way."""
        rendered = self.render([Message("system", system), *messages], tools, add_generation_prompt=True)
        return self.encode(rendered)

    def observation_ids(
        self,
        messages: Sequence[Message],
        *,
        sampled_ids: Sequence[int] | None = None,
        add_generation_prompt: bool = True,
    ) -> list[int]:
        """Ids of the template delta that follows a sampled assistant turn.

        Args:
            messages: the environment's observation (tool and/or user messages), possibly empty.
            sampled_ids: the turn's sampled ids. If given and they do not end with ``<|im_end|>`` (the
                turn hit the token limit), the delta first closes the turn with ``<|im_end|>``.
            add_generation_prompt: end with ``<|im_start|>assistant\\n`` for the next turn.

        Returns ``\\n`` + the rendered messages (+ the generation prompt), tokenised on their own.
        """
        for i, m in enumerate(messages):
            if m.role not in ("tool", "user"):
                raise ValueError(
                    f"messages: observation message {i} has role {m.role!r}; expected tool or user"
                )
        anchor = [Message("user", "u"), Message("assistant", "a")]
        full = self.render([*anchor, *messages], add_generation_prompt=add_generation_prompt)
        if not full.startswith(self._anchor_text):
            raise ValueError(
                "tokenizer: its chat template renders earlier messages differently as the chat grows"
            )
        delta = self._after_im_end + full[len(self._anchor_text) :]
        if sampled_ids is not None and (not sampled_ids or sampled_ids[-1] != self.im_end_id):
            delta = IM_END + delta
        return self.encode(delta)

    def action_text(self, sampled_ids: Sequence[int]) -> str:
        """The text of a sampled turn as the environment gets it: decoded, without a final stop token."""
        ids = list(sampled_ids)
        if ids and ids[-1] in self.stop_token_ids:
            ids.pop()
        return self.decode(ids)
