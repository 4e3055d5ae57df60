"""The default tiny models: build, save, load back with transformers, and the load errors."""

import json
import unicodedata
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
    Qwen2ForCausalLM,
    ViTConfig,
)

from agentrl.chat import SPECIAL_TOKENS, TAG_TOKENS
from agentrl.models import (
    MODEL_INFO_FILE,
    ModelLoadError,
    build_corpus,
    init_model,
    load_model,
    model_config,
    num_parameters,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return build_corpus(seeds=(0,), max_turns=20)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, corpus: list[str]) -> Path:
    return init_model(tmp_path_factory.mktemp("m") / "tiny", size="tiny", seed=0, corpus=corpus)


@pytest.fixture(scope="module")
def reloaded_tokenizer(model_dir: Path):
    return AutoTokenizer.from_pretrained(model_dir)


def test_corpus_covers_the_corpus_envs_with_tool_calls_and_a_compaction(corpus: list[str]) -> None:
    from agentrl.compaction import SUMMARY_HEADER, SUMMARY_REQUEST
    from agentrl.models import CORPUS_ENVS

    # per env and seed: the expert's conversation, then a compaction as the runner writes it
    conversations, compactions = corpus[0::2], corpus[1::2]
    assert len(conversations) == len(compactions) == len(CORPUS_ENVS)
    assert all(text.startswith("<|im_start|>system\n") for text in conversations)
    assert any("<tool_call>" in text and "<tool_response>" in text for text in conversations)
    assert all(SUMMARY_REQUEST in text and SUMMARY_HEADER in text for text in compactions)


def test_model_directory_loads_with_auto_classes_and_gives_finite_logits(model_dir: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    assert isinstance(model, Qwen2ForCausalLM)
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": "go north"}], add_generation_prompt=True, return_dict=False
    )
    logits = model(torch.tensor([ids])).logits  # (1, T, V)
    assert logits.shape == (1, len(ids), len(tokenizer))
    assert torch.isfinite(logits).all()
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert model.config.eos_token_id == tokenizer.eos_token_id
    info = json.loads((model_dir / MODEL_INFO_FILE).read_text())
    assert info == {
        "size": "tiny",
        "seed": 0,
        "vocab_size": len(tokenizer),
        "num_parameters": num_parameters(model),
    }


def test_load_model_gives_the_model_and_tokenizer_in_the_requested_dtype(model_dir: Path) -> None:
    model, tokenizer = load_model(model_dir, dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    assert tokenizer.convert_ids_to_tokens(tokenizer.eos_token_id) == "<|im_end|>"
    model32, _ = load_model(model_dir)
    assert model32.dtype == torch.float32


def test_same_seed_gives_identical_weights_and_another_seed_does_not(
    tmp_path: Path, model_dir: Path, corpus: list[str]
) -> None:
    again = init_model(tmp_path / "again", size="tiny", seed=0, corpus=corpus)
    other = init_model(tmp_path / "other", size="tiny", seed=1, corpus=corpus)
    a, b, c = (AutoModelForCausalLM.from_pretrained(p).state_dict() for p in (model_dir, again, other))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])
    assert (again / "tokenizer.json").read_text() == (model_dir / "tokenizer.json").read_text()


@pytest.mark.parametrize(("size", "target"), [("tiny", 1e6), ("small", 1e7)])
def test_named_sizes_have_about_the_advertised_parameter_count(size: str, target: float) -> None:
    # Built on the meta device: shapes only, no memory and no init time.
    with torch.device("meta"):
        model = Qwen2ForCausalLM(model_config(size, vocab_size=2048, pad_token_id=0, eos_token_id=2))
    assert 0.85 * target <= num_parameters(model) <= 1.15 * target
    assert model.config.tie_word_embeddings


def test_chat_and_tag_tokens_are_single_tokens_after_reload(reloaded_tokenizer) -> None:
    for token in (*SPECIAL_TOKENS, *TAG_TOKENS):
        ids = reloaded_tokenizer.encode(token, add_special_tokens=False)
        assert len(ids) == 1, token
        assert reloaded_tokenizer.decode(ids) == token
    ids = reloaded_tokenizer.encode('x<tool_call>\n{"a": 1}\n</tool_call>', add_special_tokens=False)
    assert ids.count(reloaded_tokenizer.convert_tokens_to_ids("<tool_call>")) == 1


@pytest.fixture(scope="module")
def saved_tokenizer(model_dir: Path) -> PreTrainedTokenizerFast:
    # The tokenizer exactly as trained and saved: tokenizer.json used as is, no class-specific rebuild.
    return PreTrainedTokenizerFast(tokenizer_file=str(model_dir / "tokenizer.json"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=80))
def test_reloaded_tokenizer_is_the_trained_one_and_round_trips(
    saved_tokenizer: PreTrainedTokenizerFast, reloaded_tokenizer, text: str
) -> None:
    # transformers 5 rebuilds a qwen2 directory's tokenizer pipeline itself; it must equal the trained one.
    ids = reloaded_tokenizer.encode(text, add_special_tokens=False)
    assert ids == saved_tokenizer.encode(text, add_special_tokens=False)
    decoded = reloaded_tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    assert decoded == unicodedata.normalize("NFC", text)


def test_tokenizer_training_is_deterministic_and_respects_vocab_size(corpus: list[str]) -> None:
    a = train_tokenizer(corpus, vocab_size=400)
    b = train_tokenizer(corpus, vocab_size=400)
    assert a.get_vocab() == b.get_vocab()
    assert len(a) <= 400
    assert a.convert_tokens_to_ids(SPECIAL_TOKENS[0]) == 0  # chat tokens take the first ids


def test_train_tokenizer_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["some text"], vocab_size=100)
    with pytest.raises(ValueError, match="texts"):
        train_tokenizer(["<|im_end|>", ""], vocab_size=1000)


def test_init_model_rejects_a_non_empty_directory_and_an_unknown_size(
    tmp_path: Path, corpus: list[str]
) -> None:
    (tmp_path / "x.txt").write_text("taken")
    with pytest.raises(ValueError, match="out_dir"):
        init_model(tmp_path, corpus=corpus)
    with pytest.raises(ValueError, match="size"):
        init_model(tmp_path / "new", size="huge", corpus=corpus)


def _assert_one_line_naming(err: pytest.ExceptionInfo, path: Path) -> None:
    message = str(err.value)
    assert str(path) in message
    assert "\n" not in message


def test_load_model_errors_name_the_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(ModelLoadError, match="does not exist") as err:
        load_model(missing)
    _assert_one_line_naming(err, missing)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no config.json") as err:
        load_model(empty)
    _assert_one_line_naming(err, empty)

    vision = tmp_path / "vit"
    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(
        vision
    )
    with pytest.raises(ModelLoadError, match="not a causal LM") as err:
        load_model(vision)
    _assert_one_line_naming(err, vision)

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError) as err:
        load_model(broken)
    _assert_one_line_naming(err, broken)
    assert isinstance(err.value, ValueError)


def test_load_model_names_the_directory_when_weights_are_missing(tmp_path: Path, model_dir: Path) -> None:
    partial = tmp_path / "partial"
    partial.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (partial / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(ModelLoadError, match="failed to load") as err:
        load_model(partial)
    _assert_one_line_naming(err, partial)


def test_load_model_refuses_a_directory_without_a_tokenizer(tmp_path: Path, model_dir: Path) -> None:
    # transformers 5 would build an empty tokenizer here instead of failing.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        (bare / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(ModelLoadError, match="no tokenizer") as err:
        load_model(bare)
    _assert_one_line_naming(err, bare)


def test_init_model_works_without_the_optional_gymnasium(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['gymnasium'] = None\n"  # import gymnasium now raises ImportError
        "from agentrl.models import init_model\n"
        f"init_model({str(tmp_path / 'm')!r}, size='tiny')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "m" / "config.json").is_file()
