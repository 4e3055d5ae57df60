"""The lean decode step (``agentrl.decode_step``) against transformers' forward: the same tokens and
log-probs on the default tiny and small models, over several turns and across compaction; the fallback
for models it does not cover; weight updates seen by the next turn."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from agentrl.envs.graph_nav import GraphNav
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from agentrl.chat import ChatFormat
from agentrl.compaction import CompactionConfig
from agentrl.decode_step import Qwen2DecodeStep
from agentrl.models import init_model, load_model
from agentrl.rollout import SamplingParams, TorchSampler
from agentrl.runner import Runner, RunnerConfig, Task

TOLERANCE = 1e-5  # float32


class KeepGoing(GraphNav):
    """graph_nav where a reply without a tool call gets a nudge back, so the random model's episodes run
    their turns and fill their windows."""

    def on_answer(self, text: str) -> str | None:
        return "Call a tool."


@pytest.fixture(scope="module", params=["tiny", "small"])
def default_model(request, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    if request.param == "tiny":
        directory = tiny_model_dir
    else:
        directory = init_model(tmp_path_factory.mktemp("models") / "small", size="small", seed=0)
    model, tokenizer = load_model(directory)
    return model.eval(), ChatFormat(tokenizer)


def _prompts(vocab: int, lengths: list[int], seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def _turns(sampler: TorchSampler, prompts, params: dict, turns: int, vocab: int):
    """``turns`` turns of every session, observations of uneven length between them; the generations."""
    sessions = [sampler.open(p) for p in prompts]
    out = []
    for turn in range(turns):
        if turn:
            for i, sid in enumerate(sessions):
                sampler.append(sid, _prompts(vocab, [1 + 3 * i + turn], seed=50 + 10 * turn + i)[0])
        out.append(sampler.generate(sessions, SamplingParams(**{**params, "seed": 100 + turn})))
    return out


def _assert_same(lean, reference) -> None:
    for turn_a, turn_b in zip(lean, reference, strict=True):
        for a, b in zip(turn_a, turn_b, strict=True):
            assert a.token_ids == b.token_ids
            assert a.finish_reason == b.finish_reason
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs, strict=True)) <= TOLERANCE


@pytest.mark.parametrize(
    "params",
    [{"temperature": 0.0, "max_new_tokens": 12}, {"temperature": 1.0, "top_p": 0.9, "max_new_tokens": 9}],
    ids=["greedy", "sampled"],
)
def test_lean_step_samples_what_transformers_samples_over_several_turns(default_model, params) -> None:
    model, _ = default_model
    vocab = model.config.vocab_size
    prompts = _prompts(vocab, [7, 30, 1, 30], seed=1)  # two share nothing, uneven lengths, padding
    lean_sampler, hf_sampler = TorchSampler(model), TorchSampler(model, lean_decode=False)
    lean = _turns(lean_sampler, prompts, params, 4, vocab)
    reference = _turns(hf_sampler, prompts, params, 4, vocab)
    assert (lean_sampler.decode_path, hf_sampler.decode_path) == ("lean", "transformers")
    _assert_same(lean, reference)


def test_lean_step_gives_the_same_episodes_across_compaction(default_model) -> None:
    """graph_nav with policy compaction in small windows: every sub-trace, summaries included, has the
    same tokens and log-probs on both paths."""
    model, chat = default_model
    config = RunnerConfig(
        max_response_tokens=16, context_budget=1024, max_turns=16, max_compactions=2, temperature=1.0,
        compaction=CompactionConfig("policy", keep_last_turns=1, max_summary_tokens=24),
    )
    tasks = [Task(seed, f"g{seed}") for seed in range(3)]
    runs = {}
    for lean in (True, False):
        runner = Runner(TorchSampler(model, lean_decode=lean), chat, config)
        runs[lean] = runner.run(lambda: KeepGoing(size="small"), tasks, seed=3)
    a, b = runs[True].episodes, runs[False].episodes
    assert len(a) == len(b) == 3
    assert sum(e.num_compactions for e in a) >= 1
    for ea, eb in zip(a, b, strict=True):
        assert len(ea.sub_traces) == len(eb.sub_traces)
        for sa, sb in zip(ea.sub_traces, eb.sub_traces, strict=True):
            assert sa.token_ids == sb.token_ids and sa.loss_mask == sb.loss_mask
            pairs = [(x, y) for x, y in zip(sa.logprobs, sb.logprobs, strict=True) if x is not None]
            assert max(abs(x - y) for x, y in pairs) <= TOLERANCE


def test_weight_updates_are_seen_by_the_next_turn(default_model) -> None:
    """An optimiser step between turns changes the weights in place: the fused copies are rebuilt."""
    model, _ = default_model
    vocab = model.config.vocab_size
    prompts = _prompts(vocab, [9, 5], seed=2)
    params = SamplingParams(temperature=0.0, max_new_tokens=8)
    copy = type(model)(model.config)
    copy.load_state_dict(model.state_dict())
    copy.eval()
    sampler = TorchSampler(copy)
    before = sampler.generate([sampler.open(p) for p in prompts], params)
    with torch.no_grad():
        for p in copy.parameters():
            p.mul_(1.5)
    after = sampler.generate([sampler.open(p) for p in prompts], params)
    reference = TorchSampler(copy, lean_decode=False)
    want = reference.generate([reference.open(p) for p in prompts], params)
    _assert_same([after], [want])
    assert [g.logprobs for g in after] != [g.logprobs for g in before]


def _small_config(cls, **extra):
    values = dict(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return cls(**{**values, **extra})


def test_other_models_fall_back_to_transformers_forward() -> None:
    torch.manual_seed(0)
    llama = LlamaForCausalLM(_small_config(LlamaConfig)).eval()
    eager = Qwen2ForCausalLM(_small_config(Qwen2Config, attn_implementation="eager")).eval()
    hooked = Qwen2ForCausalLM(_small_config(Qwen2Config)).eval()
    hooked.model.layers[0].mlp.register_forward_hook(lambda *_: None)
    assert "LlamaForCausalLM" in (Qwen2DecodeStep.unsupported(llama) or "")
    assert "eager" in (Qwen2DecodeStep.unsupported(eager) or "")
    assert "hooks" in (Qwen2DecodeStep.unsupported(hooked) or "")
    assert Qwen2DecodeStep.unsupported(Qwen2ForCausalLM(_small_config(Qwen2Config))) is None
    with pytest.raises(ValueError, match="lean decode step does not apply"):
        Qwen2DecodeStep(llama)
    prompts = _prompts(200, [6, 3], seed=4)
    params = {"temperature": 1.0, "max_new_tokens": 6}
    for model in (llama, eager, hooked):
        sampler = TorchSampler(model)
        got = _turns(sampler, prompts, params, 2, 200)
        assert sampler.decode_path == "transformers"
        _assert_same(got, _turns(TorchSampler(model, lean_decode=False), prompts, params, 2, 200))


def test_a_hook_added_later_switches_the_path_and_its_removal_switches_back() -> None:
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(_small_config(Qwen2Config)).eval()
    sampler = TorchSampler(model)
    sid = sampler.open([1, 2, 3])
    sampler.generate([sid], SamplingParams(max_new_tokens=3, seed=0))
    assert sampler.decode_path == "lean"
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda *_: calls.append(1))
    sampler.generate([sid], SamplingParams(max_new_tokens=3, seed=1))
    assert sampler.decode_path == "transformers" and len(calls) == 3  # the prefill and two decode steps
    handle.remove()
    sampler.generate([sid], SamplingParams(max_new_tokens=3, seed=2))
    assert sampler.decode_path == "lean"


def test_the_rotary_table_grows_past_its_first_size() -> None:
    """Positions beyond the first table (1024) are read from a regrown one, as transformers computes."""
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(_small_config(Qwen2Config, max_position_embeddings=4096)).eval()
    prompt = _prompts(200, [1100], seed=5)
    params = {"temperature": 0.0, "max_new_tokens": 5}
    _assert_same(_turns(TorchSampler(model), prompt, params, 2, 200),
                 _turns(TorchSampler(model, lean_decode=False), prompt, params, 2, 200))
