"""Fixtures for the serving tests: a tiny random Llama with SmolLM2's real tokenizer, adapters, a live server."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import torch

VOCAB = 49152


def _tiny_llama(hidden: int, seed: int):
    import transformers as tf

    torch.manual_seed(seed)
    cfg = tf.LlamaConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    model = tf.LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the default init: peaked logits, so greedy choices are clear-cut
        for p in model.parameters():
            p.normal_(0, 0.3 if p.ndim > 1 else 0.05).add_(1.0 if p.ndim == 1 else 0.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A saved tiny Llama (hidden 64, 2 layers, SmolLM2's 49152-token vocab and chat template)."""
    from lorakit.models import load_tokenizer

    out = tmp_path_factory.mktemp("tiny-llama")
    _tiny_llama(64, 0).save_pretrained(out)
    load_tokenizer().save_pretrained(out)
    return out


def make_adapter(model, name: str, r: int, seed: int, targets="all-linear"):
    """Add a LoRA adapter whose B is random (so it changes the output)."""
    from lorakit.adapters import LoraConfig, add_adapter, adapter_parameters

    add_adapter(model, LoraConfig(r=r, alpha=2 * r, target_modules=targets), name)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model, name):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            p.requires_grad_(False)


@pytest.fixture(scope="session")
def adapter_root(tmp_path_factory, tiny_dir):
    """Four saved adapters for the tiny model (a0..a3), one for another base (alien), under one root."""
    from lorakit.adapters import save_adapter
    from lorakit.models import load_model

    root = tmp_path_factory.mktemp("adapters")
    model, _ = load_model(tiny_dir, with_tokenizer=False)
    for i in range(4):
        make_adapter(model, f"a{i}", r=4 + 4 * (i % 2), seed=10 + i,
                     targets="all-linear" if i != 3 else ["q_proj", "v_proj"])
        save_adapter(model, root / f"a{i}", name=f"a{i}")
    other = _tiny_llama(32, 1)
    make_adapter(other, "alien", r=4, seed=99)
    save_adapter(other, root / "alien", name="alien")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """uvicorn serving `app` on 127.0.0.1 in a background thread."""

    def __init__(self, app) -> None:
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def served(tiny_dir, adapter_root):
    """A running server on the tiny model with adapters a0, a1, a2 loaded (a3 is left for hot-load tests)."""
    from lorakit.adapters import load_adapter
    from lorakit.infer.engine import Engine
    from lorakit.infer.server import create_app
    from lorakit.models import load_model

    model, tok = load_model(tiny_dir)
    for name in ("a0", "a1", "a2"):
        load_adapter(model, adapter_root / name, name)
    engine = Engine(model, tok, max_batch=8, max_context=128, max_queue=64)
    server = LiveServer(create_app(engine, "tiny", adapter_root=adapter_root))
    keyed = LiveServer(create_app(engine, "tiny", api_key="sesame", adapter_root=adapter_root))
    yield {"url": server.url, "keyed_url": keyed.url, "engine": engine, "root": adapter_root}
    server.stop()
    keyed.stop()
    engine.close()


@pytest.fixture()
def client(served):
    from openai import OpenAI

    return OpenAI(base_url=served["url"] + "/v1", api_key="unused", max_retries=0, timeout=60)
