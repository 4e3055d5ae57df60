"""Hugging Face causal LMs: the default tiny models and loading any model directory (docs/design.md,
section 8).

The default model on a CPU is a real architecture (Qwen2) built from a config in a few named sizes and
randomly initialised, with a byte-level BPE tokenizer trained locally on the built-in environments' text
and the ChatML tool-calling template of ``agentrl.chat``. ``init_model`` writes it as an ordinary Hugging
Face directory (``save_pretrained``), so the code path is the one a real model such as Qwen2.5 takes.

Choices that affect results:
- The tokenizer is byte-level BPE with Qwen2's exact pipeline (NFC normalisation, Qwen2's
  pre-tokenisation regex), because transformers 5 rebuilds that pipeline for every qwen2 directory it
  loads: any other one would be silently replaced. So every NFC string round-trips (``decode(encode(s))
  == NFC(s)``). The chat tokens are special; the tool tags are added (non-special) tokens, one token
  each, as in Qwen2.5.
- eos is ``<|im_end|>`` (the turn's stop token) and pad is ``<|endoftext|>``, as in Qwen2.5 instruct.
- Input and output embeddings are tied, as in the small Qwen2.5 models; the model's vocabulary is
  exactly the tokenizer's, so the policy can never sample an id that decodes to nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN2_PRETOKENIZE_REGEX
from transformers.utils import logging as hf_logging
from transformers.utils.chat_template_utils import render_jinja_template

from agentrl.chat import CHAT_TEMPLATE, ENDOFTEXT, IM_END, SPECIAL_TOKENS, TAG_TOKENS, message_dicts
from agentrl.compaction import SUMMARY_REQUEST, summary_message
from agentrl.types import Message

# transformers draws a bar for every load ("Loading weights") and save ("Writing model shards"): one per
# checkpoint and evaluation, noise between agentrl's own progress lines, which say what is happening.
hf_logging.disable_progress_bar()

MODEL_INFO_FILE = "agentrl_model.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
MAX_POSITIONS = 32768
CORPUS_ENVS = ("arithmetic", "graph_nav", "ledger")  # the default tokenizer's corpus (see build_corpus)
MAX_VOCAB_SIZE = 1_048_576  # 2**20; the largest real tokenizers have about 256k tokens


@dataclass(frozen=True)
class ModelSize:
    """The shape of a named default model; the vocabulary size comes from the tokenizer."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int


# Parameter counts are for a 2048-token vocabulary (tied embeddings); the tests check them.
SIZES: dict[str, ModelSize] = {
    "tiny": ModelSize(128, 384, 4, 4, 2),  # ~1.05M parameters
    "small": ModelSize(320, 960, 8, 5, 1),  # ~10.0M parameters
}


class ModelLoadError(ValueError):
    """A model directory that is missing, incomplete, or not a causal language model."""


def model_config(size: str, *, vocab_size: int, pad_token_id: int, eos_token_id: int) -> Qwen2Config:
    """The ``Qwen2Config`` of the named default size (one of ``SIZES``)."""
    if size not in SIZES:
        raise ValueError(f"size: expected one of {sorted(SIZES)}, got {size!r}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size: expected a positive int, got {vocab_size}")
    return Qwen2Config(
        vocab_size=vocab_size,
        **asdict(SIZES[size]),
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=pad_token_id,
        bos_token_id=None,
        eos_token_id=eos_token_id,
    )


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and give it the ChatML tool-calling chat template.

    The chat and tag tokens (``agentrl.chat.SPECIAL_TOKENS``, ``TAG_TOKENS``) get the first ids and are
    cut out of the training text, so no merge is learned across them. ``vocab_size`` is an upper bound:
    a small corpus can run out of merges first. Training is deterministic given the texts in order.
    """
    reserved = len(SPECIAL_TOKENS) + len(TAG_TOKENS) + len(pre_tokenizers.ByteLevel.alphabet())
    if vocab_size <= reserved:
        raise ValueError(f"vocab_size: must exceed the {reserved} reserved and byte tokens, got {vocab_size}")
    if vocab_size > MAX_VOCAB_SIZE:  # the tokenizer library aborts the whole process on sizes near 2**32
        raise ValueError(f"vocab_size: expected at most {MAX_VOCAB_SIZE:,}, got {vocab_size:,}")
    chat_tokens = [*SPECIAL_TOKENS, *TAG_TOKENS]
    splitter = re.compile("|".join(re.escape(t) for t in chat_tokens))
    pieces = [piece for text in texts for piece in splitter.split(text) if piece]
    if not pieces:
        raise ValueError("texts: no text to train the tokenizer on")

    tok = Tokenizer(models.BPE())
    # Exactly Qwen2's pipeline: transformers 5 rebuilds it this way for any qwen2 directory, whatever
    # tokenizer.json says, so a different one here would make the saved tokenizer load as another.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=chat_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(pieces, trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=MAX_POSITIONS,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def render_conversation(
    messages: Sequence[Message],
    tools: Sequence[dict[str, Any]] | None,
    *,
    add_generation_prompt: bool = False,
) -> str:
    """``messages`` through ``CHAT_TEMPLATE`` without a tokenizer (the corpus exists before the tokenizer)."""
    rendered, _ = render_jinja_template(
        [message_dicts(messages)],
        tools=list(tools) if tools else None,
        chat_template=CHAT_TEMPLATE,
        add_generation_prompt=add_generation_prompt,
    )
    return rendered[0]


def expert_conversation(env: Any, *, seed: int, max_turns: int) -> tuple[list[Message], list[dict[str, Any]]]:
    """One episode of ``env``'s expert from ``reset(seed=seed)``: the messages and the tool schemas.

    Stops when the episode ends, after ``max_turns`` turns, or when the expert has no action.
    """
    task, _ = env.reset(seed=seed)
    schemas = [t.schema() for t in env.tools]
    messages = [Message("system", env.system_prompt), Message("user", task)]
    for _ in range(max_turns):
        action = env.expert_action()
        if action is None:
            break
        result = env.step(action)
        messages.append(Message("assistant", action))
        messages.extend(result.observation)
        if result.terminated or result.truncated:
            break
    return messages, schemas


def build_corpus(
    env_names: Sequence[str] | None = None, *, seeds: Sequence[int] = (0, 1, 2), max_turns: int = 60,
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Text to train the default tokenizer on: expert episodes of environments, rendered.

    Each environment (``CORPUS_ENVS`` when ``env_names`` is None) is made with its ``options[name]``
    (default: none) and played by its expert from each seed; each episode is rendered through
    ``CHAT_TEMPLATE`` into one text, followed by a compaction as the runner writes it. The default list
    is fixed, not "whatever is registered", so the default tokenizer is the same on every machine: it
    leaves out the ``gym`` adapter, whose gymnasium dependency is optional, and any environment a user
    registers; ``agentrl init-model --env NAME`` adds a user's environment to it.
    """
    from agentrl.registry import make

    names = list(CORPUS_ENVS) if env_names is None else list(env_names)
    if not names:
        raise ValueError("env_names: no environments to build the corpus from")
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    corpus = []
    for name in names:
        env = make(name, **dict((options or {}).get(name, {})))
        for seed in seeds:
            messages, schemas = expert_conversation(env, seed=seed, max_turns=max_turns)
            corpus.append(render_conversation(messages, schemas, add_generation_prompt=True))
            # a compaction as the runner writes it: the summary request, a summary, the resumed window
            summary = env.state_digest() or task_text(messages)
            compaction = [Message("user", SUMMARY_REQUEST), Message("assistant", summary)]
            corpus.append(render_conversation([*compaction, summary_message(summary)], None))
    return corpus


def task_text(messages: Sequence[Message]) -> str:
    """The first user message of a conversation (its task), or an empty string."""
    return next((m.content for m in messages if m.role == "user"), "")


def num_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters())


def init_model(
    out_dir: str | Path,
    *,
    size: str = "tiny",
    seed: int = 0,
    vocab_size: int = 2048,
    corpus: Sequence[str] | None = None,
) -> Path:
    """Write a randomly initialised default model and its tokenizer to ``out_dir`` as an HF directory.

    The tokenizer is trained on ``corpus`` (default: ``build_corpus()``); the Qwen2 weights are drawn
    from ``seed`` (same seed, same corpus: identical weights), without touching the global torch RNG.
    ``out_dir`` must not exist or be empty. Also writes ``agentrl_model.json`` (size, seed, vocabulary,
    parameter count). Returns the directory.
    """
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"out_dir: {out} exists and is not an empty directory")
    if size not in SIZES:
        raise ValueError(f"size: expected one of {sorted(SIZES)}, got {size!r}")
    tokenizer = train_tokenizer(build_corpus() if corpus is None else corpus, vocab_size=vocab_size)
    config = model_config(
        size,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=[tokenizer.eos_token_id, tokenizer.pad_token_id], pad_token_id=tokenizer.pad_token_id
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _name_tokenizer_class(out)
    info = {"size": size, "seed": seed, "vocab_size": len(tokenizer), "num_parameters": num_parameters(model)}
    (out / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    return out


def _name_tokenizer_class(out: Path) -> None:
    # transformers 5 records its internal class name ("TokenizersBackend"), which transformers 4 (and
    # tools pinned to it) cannot load; the tokenizer is a Qwen2 one, and both versions know that name.
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text())
    config["tokenizer_class"] = "Qwen2Tokenizer"
    path.write_text(json.dumps(config, indent=2) + "\n")


def load_model(
    path: str | Path, *, dtype: torch.dtype = torch.float32
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load any Hugging Face causal LM and its tokenizer from a directory.

    Raises ``ModelLoadError`` (a ValueError) with a one-line message naming ``path`` when the directory
    is missing, has no ``config.json`` or no tokenizer, holds a model that is not a causal LM, has a
    tokenizer larger than the model's vocabulary, or fails to load.
    """
    p = Path(path)
    if not p.is_dir():
        raise ModelLoadError(f"model directory {p} does not exist")
    if not (p / "config.json").is_file():
        raise ModelLoadError(f"model directory {p} has no config.json")
    try:
        config = AutoConfig.from_pretrained(p)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(f"model directory {p}: unreadable config ({_one_line(err)})") from err
    if type(config) not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise ModelLoadError(f"model directory {p} is not a causal LM (model_type {config.model_type!r})")
    # transformers 5 builds an empty tokenizer rather than fail when a directory has none.
    if not any((p / name).is_file() for name in TOKENIZER_FILES):
        raise ModelLoadError(f"model directory {p} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    try:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(p)
    except Exception as err:  # noqa: BLE001 - truncated safetensors, refused pickles, ...: all one line
        raise ModelLoadError(f"model directory {p}: failed to load ({_one_line(err)})") from err
    if len(tokenizer) > config.vocab_size:
        raise ModelLoadError(
            f"model directory {p}: the tokenizer has {len(tokenizer)} tokens, the model {config.vocab_size}"
        )
    return model, tokenizer


def _one_line(err: BaseException) -> str:
    first = str(err).strip().splitlines()
    return f"{type(err).__name__}: {first[0] if first else ''}"
