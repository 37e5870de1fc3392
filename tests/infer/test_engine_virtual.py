"""Prefix- and prompt-tuning adapters on the serving engine: every request's greedy tokens equal
PEFT's model on the same adapter files, alone or batched with LoRA and base requests.

The oracle is PEFT's forward over the whole text at every step (`peft_greedy`). PEFT 0.21's own
`generate` cannot be one under transformers 5: with a prefix it hands its prefix cache over as
`past_key_values` beside the `cache` that generate made, and the model keeps the latter (the
prefix is lost, the tokens are the base's); with a prompt it finds no cache and puts the N
virtual embeddings in front of every decoding step again.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from lorakit.errors import LorakitError
from lorakit.infer.engine import Engine
from lorakit.infer.request import PromptTooLongError, UnknownAdapterError
from lorakit.infer.sampling import SamplingParams
from tests.infer.conftest import VOCAB, make_adapter

N = 4  # virtual tokens of both adapters
ARCHS = ("llama", "qwen2")  # both with 2 KV heads for 4 query heads (the prefix holds the KV heads only)


def _save_base(arch: str, tiny_dir, out):
    """The tiny llama of the other serving tests, or a Qwen2 (q/k/v biases) of the same size."""
    if arch == "llama":
        return tiny_dir
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.Qwen2Config(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = tf.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # peaked logits, as the llama's: greedy choices are clear-cut
        for p in model.parameters():
            p.normal_(0, 0.3 if p.ndim > 1 else 0.05).add_(1.0 if p.ndim == 1 else 0.0)
    model.save_pretrained(out)
    tf.AutoTokenizer.from_pretrained(tiny_dir).save_pretrained(out)
    return out


def save_peft_adapter(base, out, method: str, seed: int, scale: float = 1.0):
    """A PEFT-written PREFIX_TUNING or PROMPT_TUNING folder (N virtual tokens, PEFT's random init
    times `scale`)."""
    from peft import PrefixTuningConfig, PromptTuningConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    config = (PrefixTuningConfig if method == "prefix" else PromptTuningConfig)(task_type="CAUSAL_LM",
                                                                               num_virtual_tokens=N)
    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), config)
    with torch.no_grad():
        for p in model.prompt_encoder.parameters():
            p.mul_(scale)
    model.save_pretrained(out)
    return out


def peft_greedy(base, folder, ids: list[int], steps: int, eos: set[int]) -> list[int]:
    """PEFT's greedy tokens (an ending EOS included), by its forward over the whole text each step."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder).eval()
    out = list(ids)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            x = torch.tensor([out])
            out.append(int(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].argmax()))
            if out[-1] in eos:
                break
    return out[len(ids):]


def lorakit_greedy(model, adapter: str | None, ids: list[int], steps: int, eos: set[int]) -> list[int]:
    """Greedy tokens of the base or a LoRA adapter by full forwards (no cache, batch of one)."""
    from lorakit.adapters import disable_adapters, set_adapter

    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            if adapter is None:
                with disable_adapters(model):
                    logits = model(input_ids=torch.tensor([out])).logits
            else:
                set_adapter(model, adapter)
                logits = model(input_ids=torch.tensor([out])).logits
            out.append(int(logits[0, -1].argmax()))
            if out[-1] in eos:
                break
    return out[len(ids):]


def run_all(engine: Engine, jobs: list[tuple[list[int], str | None, int]]) -> list[list[int]]:
    """Submit every (prompt, adapter, max_tokens) greedy job at once; each one's sampled ids."""
    done = [threading.Event() for _ in jobs]
    reqs = [engine.submit(ids, adapter, SamplingParams(max_tokens=steps, temperature=0),
                          lambda ev, d=d: d.set() if ev.kind != "token" else None)
            for (ids, adapter, steps), d in zip(jobs, done)]
    for d in done:
        assert d.wait(120), "a request never finished"
    return [list(r.output_ids) for r in reqs]


@pytest.fixture(scope="module", params=ARCHS)
def served(request, tiny_dir, tmp_path_factory):
    """An engine on a tiny `arch` model with a PEFT prefix ("pre"), a PEFT prompt ("pro") and a LoRA ("lora")."""
    from lorakit.adapters import save_adapter
    from lorakit.infer.virtual_rows import load_any_adapter
    from lorakit.models import load_model

    root = tmp_path_factory.mktemp(f"virtual-{request.param}")
    base = _save_base(request.param, tiny_dir, root / "base")
    folders = {"pre": save_peft_adapter(base, root / "pre", "prefix", 1),
               "pro": save_peft_adapter(base, root / "pro", "prompt", 2)}
    lora_model, _ = load_model(base, with_tokenizer=False)
    make_adapter(lora_model, "lora", r=4, seed=3)
    folders["lora"] = save_adapter(lora_model, root / "lora", name="lora")
    model, tok = load_model(base)
    for name, folder in folders.items():
        load_any_adapter(model, folder, name)
    # 3 slots for 7 requests: some wait, and rows move slots as others finish; chunks of 3 prompt tokens
    engine = Engine(model, tok, max_batch=3, max_context=96, prefill_chunk=3)
    yield {"engine": engine, "model": model, "tok": tok, "base": base, "folders": folders, "root": root}
    engine.close()


def _prompts(tok) -> list[list[int]]:
    return [tok(t).input_ids for t in ("Once upon a time", "The cat sat on the mat and", "Hi", "A B C D E F G H")]


def test_mixed_batch_gives_each_request_its_tokens_alone_and_peft_s(served):
    engine, model, tok = served["engine"], served["model"], served["tok"]
    p = _prompts(tok)
    jobs = [(p[0], "pre", 9), (p[1], "pro", 6), (p[2], "lora", 11), (p[3], None, 7),
            (p[1], "pre", 5), (p[0], "pro", 10), (p[3], "lora", 8)]
    together = run_all(engine, jobs)
    alone = [run_all(engine, [job])[0] for job in jobs]
    assert together == alone
    for (ids, adapter, steps), got in zip(jobs, together):
        if adapter in ("pre", "pro"):
            want = peft_greedy(served["base"], served["folders"][adapter], ids, steps, engine.eos_ids)
        else:
            want = lorakit_greedy(model, adapter, ids, steps, engine.eos_ids)
        assert got == want, (adapter, ids)
    # the virtual tokens change the answer, so the comparison means something
    base = {tuple(ids): run_all(engine, [(ids, None, steps)])[0] for ids, adapter, steps in jobs if adapter == "pre"}
    assert all(together[i] != base[tuple(jobs[i][0])][: len(together[i])] for i in (0, 4))


def test_a_prompt_longer_than_one_chunk_after_the_virtual_tokens(served):
    engine, tok = served["engine"], served["tok"]
    ids = tok("word " * 20).input_ids  # many chunks of 3
    for adapter in ("pre", "pro"):
        [got] = run_all(engine, [(ids, adapter, 6)])
        assert got == peft_greedy(served["base"], served["folders"][adapter], ids, 6, engine.eos_ids)


def test_the_virtual_tokens_count_against_the_context(served):
    engine = served["engine"]
    ids = [5] * (engine.max_context - N)  # fits alone, not after N virtual tokens
    for adapter in ("pre", "pro"):
        with pytest.raises(PromptTooLongError, match="virtual tokens"):
            engine.submit(ids, adapter, SamplingParams(max_tokens=1, temperature=0), lambda ev: None)
    [got] = run_all(engine, [(ids[: -1], "pre", 3)])  # one short of the context: one token, then "length"
    assert len(got) == 1


def test_hot_load_unload_and_combine_refusal(served):
    from lorakit.infer import hotswap

    engine, tok = served["engine"], served["tok"]
    ids = _prompts(tok)[0]
    hotswap.load(engine, "pre2", served["folders"]["pre"]).result(30)
    hotswap.load(engine, "pro2", served["folders"]["pro"]).result(30)
    assert {"pre2", "pro2"} <= set(engine.adapter_names())
    assert run_all(engine, [(ids, "pre2", 6), (ids, "pro2", 6)]) == run_all(engine, [(ids, "pre", 6), (ids, "pro", 6)])
    with pytest.raises(LorakitError, match="prefix/prompt tuning adapter"):
        hotswap.combine(engine, "mix", {"pre2": 1.0, "lora": 1.0})
    with pytest.raises(hotswap.AdapterConflictError):
        hotswap.load(engine, "pre2", served["folders"]["pro"])
    for name in ("pre2", "pro2"):
        hotswap.unload(engine, name)
    engine.call(engine.finish_draining)
    assert not {"pre2", "pro2"} & set(engine.adapter_names())
    with pytest.raises(UnknownAdapterError):
        engine.submit(ids, "pre2", SamplingParams(max_tokens=1), lambda ev: None)


def test_a_prefix_folder_for_another_base_is_refused(served, tmp_path_factory):
    from lorakit.infer import hotswap
    from tests.infer.conftest import _tiny_llama

    other = tmp_path_factory.mktemp("other-base")
    _tiny_llama(32, 1).save_pretrained(other)
    folder = save_peft_adapter(other, other / "pre", "prefix", 4)
    with pytest.raises(hotswap.AdapterIncompatibleError, match="token_dim"):
        hotswap.load(served["engine"], "alien", folder)
    assert "alien" not in served["engine"].adapter_names()


def test_an_engine_refuses_a_model_with_hook_attached_virtual_tokens(served):
    from lorakit.adapters import load_adapter
    from lorakit.models import load_model

    model, tok = load_model(served["base"])
    load_adapter(model, served["folders"]["pre"], "pre")  # lorakit.adapters' hooks: they would act on every row
    with pytest.raises(LorakitError, match="load_any_adapter"):
        Engine(model, tok, max_batch=1, max_context=32)
