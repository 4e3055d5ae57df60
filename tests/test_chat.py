"""The token-stream conventions: piecewise prompt + sampled + observation ids equal the chat template's."""

import re
import shutil
import unicodedata

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from agentrl.chat import CHAT_TEMPLATE, IM_END, ChatFormat, message_dicts
from agentrl.models import build_corpus, init_model
from agentrl.types import Message

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "move",
            "description": "Walk to an adjacent room.",
            "parameters": {
                "type": "object",
                "properties": {"room": {"type": "string", "description": "where to go"}},
                "required": ["room"],
                "additionalProperties": False,
            },
        },
    }
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    corpus = build_corpus(seeds=(0,), max_turns=20)
    model_dir = init_model(tmp_path_factory.mktemp("m") / "tiny", size="tiny", seed=0, corpus=corpus)
    return AutoTokenizer.from_pretrained(model_dir)  # the tokenizer exactly as a runner would load it


@pytest.fixture(scope="module")
def fmt(tokenizer) -> ChatFormat:
    return ChatFormat(tokenizer)


def _template_ids(tokenizer, messages: list[Message], tools: list[dict] | None) -> list[int]:
    return tokenizer.apply_chat_template(
        message_dicts(messages), tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False
    )


def test_expert_episodes_of_every_builtin_env_stream_exactly_as_the_template(
    tokenizer, fmt: ChatFormat
) -> None:
    from agentrl.registry import list_envs, make

    names = [name for name, _ in list_envs()]
    assert names, "no registered environments"
    for name in names:
        if name == "code_fix" and shutil.which("bwrap") is None:
            continue  # its sandbox needs bubblewrap; tests/test_env_code_fix.py says so when it skips
        env = make(name)
        for seed in (0, 1, 2):
            task, _ = env.reset(seed=seed)
            tools = [t.schema() for t in env.tools]
            stream = fmt.prompt_ids(env.system_prompt, tools, task)
            messages = [Message("system", env.system_prompt), Message("user", task)]
            for _ in range(300):
                action = env.expert_action()
                if action is None:
                    break
                sampled = fmt.encode(action) + [fmt.im_end_id]  # the stop token is sampled too
                assert fmt.action_text(sampled) == unicodedata.normalize("NFC", action)
                result = env.step(action)
                stream += sampled + fmt.observation_ids(result.observation, sampled_ids=sampled)
                messages += [Message("assistant", action), *result.observation]
                if result.terminated or result.truncated:
                    break
            assert len(messages) > 2 or env.expert_action() is None, name
            assert stream == _template_ids(tokenizer, messages, tools or None), f"{name} seed {seed}"


# An action that starts with whitespace holding a newline merges with the generation prompt's newline
# under Qwen2's pre-tokeniser (documented in agentrl.chat); every other action must stream exactly.
_MERGES_WITH_PROMPT = re.compile(r"\s*[\r\n]")
_observations = st.lists(st.tuples(st.sampled_from(["tool", "user"]), st.text(max_size=30)), max_size=4)


@settings(max_examples=150, deadline=None)
@given(
    system=st.text(max_size=20),
    task=st.text(max_size=30),
    turns=st.lists(st.tuples(st.text(max_size=30), _observations), min_size=1, max_size=3),
    with_tools=st.booleans(),
)
def test_any_conversation_streams_exactly_as_the_template(
    tokenizer, fmt: ChatFormat, system: str, task: str, turns: list, with_tools: bool
) -> None:
    assume(not any(_MERGES_WITH_PROMPT.match(action) for action, _ in turns))
    tools = TOOLS if with_tools else []
    stream = fmt.prompt_ids(system, tools, task)
    messages = [Message("system", system), Message("user", task)]
    for action, observation in turns:
        obs = [Message(role, content) for role, content in observation]
        sampled = fmt.encode(action) + [fmt.im_end_id]
        stream += sampled + fmt.observation_ids(obs, sampled_ids=sampled)
        messages += [Message("assistant", action), *obs]
    assert stream == _template_ids(tokenizer, messages, tools or None)


def test_observation_starts_after_the_sampled_stop_token(fmt: ChatFormat) -> None:
    sampled = fmt.encode("done") + [fmt.im_end_id]
    text = fmt.decode(
        fmt.observation_ids([Message("tool", "ok"), Message("tool", "42")], sampled_ids=sampled)
    )
    # Consecutive tool results share one user turn, as Qwen2.5 writes them.
    assert text == (
        "\n<|im_start|>user\n<tool_response>\nok\n</tool_response>\n<tool_response>\n42\n</tool_response>"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert fmt.decode(fmt.observation_ids([])) == "\n<|im_start|>assistant\n"
    assert fmt.decode(fmt.observation_ids([Message("user", "hint")], add_generation_prompt=False)) == (
        "\n<|im_start|>user\nhint<|im_end|>\n"
    )


def test_a_turn_cut_off_without_stop_token_is_closed_by_the_observation(fmt: ChatFormat) -> None:
    cut = fmt.encode("I will mo")
    ids = fmt.observation_ids([Message("user", "Your turn ran out of tokens.")], sampled_ids=cut)
    assert ids[0] == fmt.im_end_id
    assert fmt.decode(ids).startswith(IM_END + "\n<|im_start|>user\n")
    assert fmt.observation_ids([], sampled_ids=[])[0] == fmt.im_end_id


def test_observation_rejects_assistant_and_system_messages(fmt: ChatFormat) -> None:
    with pytest.raises(ValueError, match="messages"):
        fmt.observation_ids([Message("tool", "ok"), Message("assistant", "no")])
    with pytest.raises(ValueError, match="messages"):
        fmt.observation_ids([Message("system", "no")])


def test_prompt_lists_the_tools_and_ends_with_the_generation_prompt(fmt: ChatFormat) -> None:
    text = fmt.decode(fmt.prompt_ids("You explore.", TOOLS, "Find the key."))
    assert text.startswith("<|im_start|>system\nYou explore.\n\n# Tools\n")
    assert '\n<tools>\n{"type": "function", "function": {"name": "move", ' in text
    assert text.endswith("<|im_start|>user\nFind the key.<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.decode(fmt.prompt_ids("Be brief.", [], "2+2?")) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_stop_tokens_and_action_text(fmt: ChatFormat, tokenizer) -> None:
    assert fmt.stop_token_ids == (
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
        tokenizer.convert_tokens_to_ids("<|endoftext|>"),
    )
    action = '<tool_call>\n{"name": "move", "arguments": {"room": "hall"}}\n</tool_call>'
    assert fmt.action_text(fmt.encode(action) + [fmt.im_end_id]) == action
    assert fmt.action_text(fmt.encode(action)) == action  # cut off: nothing to strip


def test_structured_tool_calls_render_like_the_text_form(tokenizer) -> None:
    # HF-style assistant messages with tool_calls give the same text an expert writes with format_tool_call.
    call = {"type": "function", "function": {"name": "move", "arguments": {"room": "hall"}}}
    structured = {"role": "assistant", "content": "", "tool_calls": [call]}
    text = '<tool_call>\n{"name": "move", "arguments": {"room": "hall"}}\n</tool_call>'
    as_text = {"role": "assistant", "content": text}
    user = {"role": "user", "content": "go"}
    rendered = [tokenizer.apply_chat_template([user, m], tokenize=False) for m in (structured, as_text)]
    assert rendered[0] == rendered[1]


def test_assistant_tokens_mask_marks_the_policy_tokens(tokenizer, fmt: ChatFormat) -> None:
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    out = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    policy = [t for t, m in zip(out["input_ids"], out["assistant_masks"], strict=True) if m]
    assert policy == fmt.encode("hello") + [fmt.im_end_id]  # the stop token is a policy token


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=100))
def test_decoding_is_lossless_for_any_nfc_text(fmt: ChatFormat, text: str) -> None:
    assert fmt.decode(fmt.encode(text)) == unicodedata.normalize("NFC", text)


def test_chat_format_needs_a_chatml_tokenizer_with_a_template(tokenizer) -> None:
    class NoTemplate:
        chat_template = None

    class NoChatTokens:
        chat_template = CHAT_TEMPLATE

        def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
            return [ord(c) for c in text]  # one id per character: <|im_end|> is not a single token

    with pytest.raises(ValueError, match="tokenizer"):
        ChatFormat(NoTemplate())
    with pytest.raises(ValueError, match="tokenizer"):
        ChatFormat(NoChatTokens())
    assert tokenizer.chat_template == CHAT_TEMPLATE
