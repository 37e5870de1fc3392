"""`lorakit serve` answers sequence-classification adapters at /classify (vLLM's classification API).

On a decoder base (the tiny Llama of tests/infer/conftest.py) a SEQ_CLS adapter runs on the very
weights the generation adapters use: its answers equal the classifier PEFT's files describe
(`load_classifier` + `load_adapter`, scored by `logits_of`), and generation answers stay what they
are without it, also while both run at once. An encoder base (a plain tiny BERT, or a whole
classifier folder) serves /classify only. Every refusal is a 400/404 in OpenAI's envelope.
"""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from lorakit.classifier import load_classifier
from lorakit.train.classify import logits_of
from tests.infer.conftest import LiveServer
from tests.infer.http import delete, get, post
from tests.train.classify_data import CLASSES, prepare, save_word_tokenizer, write_records

TOL = 1e-5
TEXTS = ["the quick brown fox", "a cat sat on the mat and looked at the dog for a long while",
         "hello", "numbers 1 2 3 4 5 6 7 8 9 10 11 12", "one more sentence, with punctuation!"]


def _envelope(reply, status: int) -> str:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["code"] == status and error["type"] and isinstance(error["message"], str)
    assert "\n" not in error["message"]
    return error["message"]


def _expected(model, tok, text: str) -> torch.Tensor:
    """The classifier's probabilities for `text` alone, unpadded (K,)."""
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        return torch.softmax(logits_of(model, enc)[0].double(), -1)


def _decoder_cls_adapter(base_dir, out, seed: int):
    """A SEQ_CLS adapter for the tiny Llama: random LoRA factors (they change the logits) and a
    small random score head (probabilities away from 0 and 1, so comparing them means something)."""
    from lorakit.adapters import LoraConfig, add_classifier_adapter, adapter_parameters, save_adapter

    torch.manual_seed(seed)
    model, _ = load_classifier(base_dir, list(CLASSES))
    add_classifier_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_parameters(model, "default"):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for p in model.score.adapter_parameters("default").values():
            p.mul_(0.05)
    save_adapter(model, out)
    return out


@pytest.fixture(scope="module")
def cls_root(tmp_path_factory, tiny_dir, adapter_root):
    """An adapter root holding a generation adapter (a0 of conftest) and a SEQ_CLS adapter (cls)."""
    root = tmp_path_factory.mktemp("cls-root")
    shutil.copytree(adapter_root / "a0", root / "a0")
    _decoder_cls_adapter(tiny_dir, root / "cls", seed=3)
    return root


@pytest.fixture(scope="module")
def oracle(tiny_dir, cls_root):
    """The classifier the adapter's files describe: the base as a classifier with the adapter."""
    from lorakit.adapters import load_adapter

    model, tok = load_classifier(tiny_dir, list(CLASSES), head_from_adapter=True)
    load_adapter(model, cls_root / "cls")
    return model.eval(), tok


def _engine(tiny_dir, cls_root):
    from lorakit.adapters import load_adapter
    from lorakit.infer.engine import Engine
    from lorakit.models import load_model

    model, tok = load_model(tiny_dir)
    load_adapter(model, cls_root / "a0", "a0")
    return Engine(model, tok, max_batch=4, max_context=128, max_queue=32)


@pytest.fixture(scope="module")
def mixed(tiny_dir, cls_root):
    """A server on the tiny Llama with a0 (generation) and cls (classification) loaded at start, as
    `lorakit serve --adapter a0=.. --adapter cls=..` loads them."""
    from lorakit.infer.classifier_runner import SharedBaseClassifiers
    from lorakit.infer.server import create_app

    engine = _engine(tiny_dir, cls_root)
    classifiers = SharedBaseClassifiers(engine)
    classifiers.load("cls", cls_root / "cls", reserved={"tiny"})
    server = LiveServer(create_app(engine, "tiny", adapter_root=cls_root, classifiers=classifiers))
    yield server.url
    server.stop()
    engine.close()


def _classify(url: str, model: str, given, path: str = "/v1/classify", **extra):
    return post(url + path, json={"model": model, "input": given, **extra})


def test_a_classification_equals_the_classifier_with_its_adapter(mixed, oracle):
    model, tok = oracle
    reply = _classify(mixed, "cls", TEXTS).raise_for_status().json()
    assert reply["object"] == "list" and reply["model"] == "cls" and reply["id"].startswith("classify-")
    assert [d["index"] for d in reply["data"]] == list(range(len(TEXTS)))
    tokens = 0
    for text, item in zip(TEXTS, reply["data"]):
        want = _expected(model, tok, text)
        got = torch.tensor(item["probs"], dtype=torch.float64)
        assert (got - want).abs().max().item() <= TOL
        assert abs(sum(item["probs"]) - 1) <= 1e-9
        assert item["num_classes"] == len(CLASSES) and item["label"] == CLASSES[int(want.argmax())]
        tokens += len(tok(text)["input_ids"])
    assert reply["usage"]["prompt_tokens"] == reply["usage"]["total_tokens"] == tokens
    # the comparison means something: the probabilities are not all pinned at 0 and 1
    assert min(max(d["probs"]) for d in reply["data"]) < 0.99
    # the same answer at vLLM's other path
    again = _classify(mixed, "cls", TEXTS, path="/classify").raise_for_status().json()
    assert [d["probs"] for d in again["data"]] == [d["probs"] for d in reply["data"]]


def test_a_batch_gives_each_text_what_it_gets_alone_and_token_ids_are_the_text(mixed, oracle):
    _, tok = oracle
    together = _classify(mixed, "cls", TEXTS).raise_for_status().json()["data"]
    for text, item in zip(TEXTS, together):
        alone = _classify(mixed, "cls", text).raise_for_status().json()["data"]
        assert len(alone) == 1 and alone[0]["label"] == item["label"]
        assert max(abs(a - b) for a, b in zip(alone[0]["probs"], item["probs"])) <= TOL
        ids = _classify(mixed, "cls", tok(text)["input_ids"]).raise_for_status().json()["data"][0]
        assert ids["probs"] == alone[0]["probs"]
    ids = [tok(t)["input_ids"] for t in TEXTS]
    as_ids = _classify(mixed, "cls", ids).raise_for_status().json()["data"]
    assert [d["probs"] for d in as_ids] == [d["probs"] for d in together]


def test_raw_scores_and_truncation_follow_vllm(mixed, oracle):
    model, tok = oracle
    raw = _classify(mixed, "cls", TEXTS[1], use_activation=False).raise_for_status().json()["data"][0]
    with torch.no_grad():
        want = logits_of(model, tok(TEXTS[1], return_tensors="pt"))[0]
    assert max(abs(a - b) for a, b in zip(raw["probs"], want.tolist())) <= TOL
    long = " ".join(["word"] * 300)
    _envelope(_classify(mixed, "cls", long), 400)
    cut = _classify(mixed, "cls", long, truncate_prompt_tokens=-1).raise_for_status().json()
    last = tok(long)["input_ids"][-128:]  # the server's --max-context: the last tokens are kept
    assert cut["usage"]["prompt_tokens"] == 128
    assert cut["data"][0]["probs"] == _classify(mixed, "cls", last).raise_for_status().json()["data"][0]["probs"]


def test_models_and_adapters_list_the_classification_adapter(mixed):
    assert [m["id"] for m in get(mixed + "/v1/models").json()["data"]] == ["tiny", "a0", "cls"]
    tasks = {a["name"]: a["task"] for a in get(mixed + "/v1/adapters").json()["data"]}
    assert tasks == {"a0": "generate", "cls": "classify"}


@pytest.mark.parametrize("body, status, words", [
    ({"model": "a0", "input": "x"}, 400, "generation adapter"),
    ({"model": "tiny", "input": "x"}, 400, "not a classifier"),
    ({"model": "nope", "input": "x"}, 404, "not found"),
    ({"model": "cls", "input": ""}, 400, "empty"),
    ({"model": "cls", "input": []}, 400, "empty"),
    ({"model": "cls", "input": ["fine", ""]}, 400, "input[1] is empty"),
    ({"model": "cls", "input": ["text", [1, 2]]}, 400, "not a mix"),
    ({"model": "cls", "input": 7}, 400, "'input' must be"),
    ({"model": "cls"}, 400, "'input' is required"),
    ({"input": "x"}, 400, "'model' is required"),
    ({"model": "cls", "input": [10**9]}, 400, "outside the vocabulary"),
    ({"model": "cls", "input": "x", "truncate_prompt_tokens": 0}, 400, "truncate_prompt_tokens"),
    ({"model": "cls", "input": "x", "use_activation": "yes"}, 400, "'use_activation' must be"),
    ([{"model": "cls", "input": "x"}], 400, "JSON object"),
])
def test_bad_classification_requests_are_refused_in_the_envelope(mixed, body, status, words):
    assert words in _envelope(post(mixed + "/v1/classify", json=body), status)


def test_malformed_and_oversized_bodies_are_refused_in_the_envelope(mixed):
    assert "not valid JSON" in _envelope(post(mixed + "/classify", content=b'{"model": "cls", "input": '), 400)
    assert "nested" in _envelope(post(mixed + "/classify", content=b"[" * 100 + b"]" * 100), 400)
    declared = {"content-length": str(5 * 2**20)}  # refused from its header, before the body is read
    assert "limit" in _envelope(post(mixed + "/classify", content=b"{}", headers=declared), 413)


def test_generation_refuses_a_classification_adapter(mixed):
    for path, body in (("/v1/completions", {"prompt": "hi"}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})):
        message = _envelope(post(mixed + path, json={"model": "cls", "max_tokens": 2, **body}), 400)
        assert "classification adapter" in message and "/v1/classify" in message
    message = _envelope(post(mixed + "/v1/adapters/combine", json={"name": "mix", "adapters": {"a0": 1, "cls": 1}}),
                        400)
    assert "cannot be combined" in message


def _complete(url: str, model: str, prompt: str) -> str:
    body = {"model": model, "prompt": prompt, "max_tokens": 12, "temperature": 0}
    return post(url + "/v1/completions", json=body).raise_for_status().json()["choices"][0]["text"]


def test_generation_is_unchanged_by_a_classification_adapter_even_at_the_same_time(tiny_dir, cls_root):
    """Loaded over HTTP, the classification adapter changes no generation answer (base or a0),
    and classifications sent while generations run equal those sent alone; after its unload it
    is gone and generation is still unchanged."""
    from lorakit.infer.server import create_app

    engine = _engine(tiny_dir, cls_root)
    server = LiveServer(create_app(engine, "tiny", adapter_root=cls_root))
    try:
        prompts = ["Once upon a time", "The capital of", "1, 2, 3,"]
        before = {(m, p): _complete(server.url, m, p) for m in ("a0", "tiny") for p in prompts}
        assert len(set(before.values())) > 1 and all(before.values())
        assert post(server.url + "/v1/adapters", json={"name": "cls", "path": "cls"}).raise_for_status().status_code \
            == 201
        alone = [_classify(server.url, "cls", t).raise_for_status().json()["data"][0]["probs"] for t in TEXTS]
        assert {k: _complete(server.url, *k) for k in before} == before

        def generation(key):
            return key, _complete(server.url, *key)

        def classification(i):
            return i, _classify(server.url, "cls", TEXTS[i]).raise_for_status().json()["data"][0]["probs"]

        with ThreadPoolExecutor(8) as pool:
            gens = [pool.submit(generation, k) for k in list(before) * 2]
            clss = [pool.submit(classification, i % len(TEXTS)) for i in range(3 * len(TEXTS))]
            for fut in gens:
                key, text = fut.result()
                assert text == before[key]
            for fut in clss:
                i, probs = fut.result()
                assert max(abs(a - b) for a, b in zip(probs, alone[i])) <= 1e-6
        assert delete(server.url + "/v1/adapters/cls").status_code == 200
        _envelope(_classify(server.url, "cls", "x"), 404)
        assert {k: _complete(server.url, *k) for k in before} == before
        assert [a["name"] for a in get(server.url + "/v1/adapters").json()["data"]] == ["a0"]
    finally:
        server.stop()
        engine.close()


def test_a_classification_adapter_for_another_base_is_refused(tmp_path, cls_root, mixed):
    """A head of another hidden size, or factors that fit no module, is a 422 naming the folder."""
    import transformers as tf

    other = tmp_path / "other"
    tf.LlamaForCausalLM(tf.LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, pad_token_id=0)).save_pretrained(other)
    save_word_tokenizer(other, bert=False)
    _decoder_cls_adapter(other, cls_root / "alien-cls", seed=1)
    reply = post(mixed + "/v1/adapters", json={"name": "alien", "path": "alien-cls"})
    assert "alien-cls" in _envelope(reply, 422)
    assert "alien" not in [m["id"] for m in get(mixed + "/v1/models").json()["data"]]


# --- an encoder base: /classify only ---

def _plain_bert(folder):
    """A tiny BERT encoder without a classifier head (as MiniLM ships), weights of std 0.2 (see
    tests/train/classify_data.save_tiny), with the word-level tokenizer."""
    import transformers as tf

    torch.manual_seed(0)
    tf.BertModel(tf.BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=48, max_position_embeddings=64, hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0, initializer_range=0.2, pad_token_id=0)
                 ).save_pretrained(folder)
    save_word_tokenizer(folder, bert=True)
    return folder


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    """A plain BERT and a LoRA classification adapter `lorakit train --task classify` trained on it."""
    from lorakit.train.config import TrainConfig
    from lorakit.train.run import run_training

    root = tmp_path_factory.mktemp("encoder")
    base = _plain_bert(root / "bert")
    data = prepare(write_records(root / "records.jsonl", n=60), root / "data", base)
    run_training(TrainConfig(model=str(base), data=str(data), out=str(root / "adapters" / "cls"), task="classify",
                             batch_size=8, max_steps=4, lr=1e-2, warmup=0, schedule="constant", rank=4, seed=0,
                             progress=False, threads=1, precision="fp32", max_seq_len=64))
    run_training(TrainConfig(model=str(base), data=str(data), out=str(root / "adapters" / "pro"), task="classify",
                             method="prompt", virtual_tokens=4, batch_size=8, max_steps=4, warmup=0,
                             schedule="constant", seed=0, progress=False, threads=1, precision="fp32", max_seq_len=60))
    return root


ENCODER_TEXTS = ["the zora and zorb", "blepa of blepc .", "in quina to quinb a quinc", "the"]


def test_an_encoder_with_a_classification_adapter_serves_classify_only(encoder):
    """What `lorakit serve --model BERT --adapter cls=DIR` builds: the adapter's classes by name,
    the probabilities of the classifier, and generation refused."""
    from lorakit.adapters import load_adapter
    from lorakit.infer.classify_server import build_classifier_app, classifier_base

    base, adapter = encoder / "bert", encoder / "adapters" / "cls"
    assert json.loads((adapter / "labels.json").read_text())["id2label"] == {str(i): c for i, c in enumerate(CLASSES)}
    assert classifier_base(base)
    app = build_classifier_app(base, "bert", [("cls", adapter)], [], precision="fp32", quantize=None, max_context=2048,
                               api_key=None, adapter_root=encoder / "adapters")
    server = LiveServer(app)
    try:
        model, tok = load_classifier(base, list(CLASSES), head_from_adapter=True)
        load_adapter(model, adapter)
        model.eval()
        reply = _classify(server.url, "cls", ENCODER_TEXTS).raise_for_status().json()
        for text, item in zip(ENCODER_TEXTS, reply["data"]):
            want = _expected(model, tok, text)
            assert (torch.tensor(item["probs"], dtype=torch.float64) - want).abs().max().item() <= TOL
            assert item["label"] == CLASSES[int(want.argmax())]
        assert "sequence classifier and cannot generate" in _envelope(
            post(server.url + "/v1/completions", json={"model": "cls", "prompt": "x"}), 400)
        assert "no trained classifier head" in _envelope(_classify(server.url, "bert", "the"), 400)
        # the position table holds 64 tokens: a longer input is refused, not cut short
        assert "at most 64" in _envelope(_classify(server.url, "cls", " ".join(["the"] * 80)), 400)
        # loaded again over HTTP under another name: the same answers
        assert post(server.url + "/v1/adapters", json={"name": "again", "path": "cls"}).status_code == 201
        again = _classify(server.url, "again", ENCODER_TEXTS).raise_for_status().json()
        assert [d["probs"] for d in again["data"]] == [d["probs"] for d in reply["data"]]
        assert delete(server.url + "/v1/adapters/again").status_code == 200
        _envelope(_classify(server.url, "again", "the"), 404)
    finally:
        server.stop()


def test_a_prompt_tuning_classifier_is_served_beside_a_lora_one(encoder):
    """A PROMPT_TUNING SEQ_CLS folder and a LoRA one on one encoder base: each request gets its own
    adapter's probabilities (the prompt's hooks are on for its requests only), and an input that
    leaves the virtual tokens no room in the position table is refused in one line."""
    from lorakit.adapters import load_adapter
    from lorakit.infer.classify_server import build_classifier_app

    base, root = encoder / "bert", encoder / "adapters"
    app = build_classifier_app(base, "bert", [("pro", root / "pro"), ("cls", root / "cls")], [], precision="fp32",
                               quantize=None, max_context=2048, api_key=None, adapter_root=root)
    server = LiveServer(app)
    try:
        for name in ("pro", "cls", "pro"):  # in turn: the prompt's hooks leave the LoRA classifier as it was
            model, tok = load_classifier(base, list(CLASSES), head_from_adapter=True)
            load_adapter(model, root / name)
            model.eval()
            reply = _classify(server.url, name, ENCODER_TEXTS).raise_for_status().json()
            for text, item in zip(ENCODER_TEXTS, reply["data"]):
                assert (torch.tensor(item["probs"], dtype=torch.float64) - _expected(model, tok, text)).abs().max() <= TOL
        assert "send at most 60 tokens" in _envelope(_classify(server.url, "pro", " ".join(["the"] * 62)), 400)
        assert delete(server.url + "/v1/adapters/pro").status_code == 200
        _envelope(_classify(server.url, "pro", "the"), 404)
    finally:
        server.stop()


def test_a_whole_classifier_folder_classifies_with_its_own_head(tmp_path):
    from lorakit.infer.classify_server import build_classifier_app, classifier_base
    from tests.train.classify_data import save_tiny

    folder = save_tiny("bert", tmp_path / "bert-cls")
    assert classifier_base(folder)
    server = LiveServer(build_classifier_app(folder, "bert-cls", [], [], precision="fp32", quantize=None,
                                             max_context=2048, api_key=None, adapter_root=None))
    try:
        model, tok = load_classifier(folder)
        reply = _classify(server.url, "bert-cls", ENCODER_TEXTS).raise_for_status().json()
        for text, item in zip(ENCODER_TEXTS, reply["data"]):
            want = _expected(model, tok, text)
            assert (torch.tensor(item["probs"], dtype=torch.float64) - want).abs().max().item() <= TOL
            assert item["label"] == model.config.id2label[int(want.argmax())]
        assert "cannot generate" in _envelope(post(server.url + "/v1/chat/completions", json={
            "model": "bert-cls", "messages": [{"role": "user", "content": "x"}]}), 400)
        assert "is off" in _envelope(post(server.url + "/v1/adapters", json={"name": "x", "path": "x"}), 403)
    finally:
        server.stop()


def test_serve_refuses_a_generation_adapter_on_a_classifier_base(tmp_path, encoder, adapter_root, capsys):
    from lorakit.cli import main

    code = main(["serve", "--model", str(encoder / "bert"), "--adapter", f"cls={encoder / 'adapters' / 'cls'}",
                 "--adapter", f"gen={adapter_root / 'a0'}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--adapter gen=" in err and "cannot generate" in err and "\n" not in err


def test_serve_refuses_an_encoder_without_a_head_or_an_adapter(encoder, capsys):
    from lorakit.cli import main

    assert main(["serve", "--model", str(encoder / "bert")]) == 2
    err = capsys.readouterr().err.strip()
    assert "cannot generate text or classify" in err and "--adapter NAME=DIR" in err and "\n" not in err


def _serving(argv: list[str]):
    """`lorakit serve ARGV` in a subprocess: yields its URL once /health answers, then SIGTERMs it
    and checks it exits with status 0."""
    import subprocess
    import sys
    import time
    from contextlib import contextmanager

    from tests.infer.conftest import free_port

    @contextmanager
    def run():
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "lorakit", "serve", *argv, "--port", str(port),
                                 "--shutdown-timeout", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, proc.stdout.read().decode()
                try:
                    get(url + "/health")
                    break
                except OSError:
                    assert time.monotonic() < deadline, "server did not come up"
                    time.sleep(0.2)
            yield url
            proc.terminate()
            assert proc.wait(timeout=30) == 0, proc.stdout.read().decode()[-2000:]
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=20)

    return run()


def test_serve_loads_classification_adapters_from_its_flags(tiny_dir, cls_root, mixed, encoder):
    """The command itself: on the decoder base both kinds of adapter at once, answering as the
    in-process server does; on the encoder /classify only."""
    with _serving(["--model", str(tiny_dir), "--adapter", f"a0={cls_root / 'a0'}", "--adapter",
                   f"cls={cls_root / 'cls'}", "--max-context", "128", "--precision", "fp32"]) as url:
        assert get(url + "/health").json()["adapters"] == ["a0", "cls"]
        got = _classify(url, "cls", TEXTS).raise_for_status().json()["data"]
        assert [d["probs"] for d in got] == [d["probs"] for d in _classify(mixed, "cls", TEXTS).json()["data"]]
        assert _complete(url, "a0", "Once upon a time") == _complete(mixed, "a0", "Once upon a time")
        _envelope(post(url + "/v1/completions", json={"model": "cls", "prompt": "x"}), 400)
    with _serving(["--model", str(encoder / "bert"), "--adapter", f"cls={encoder / 'adapters' / 'cls'}"]) as url:
        reply = _classify(url, "cls", ENCODER_TEXTS).raise_for_status().json()
        assert {d["label"] for d in reply["data"]} <= set(CLASSES)
        _envelope(post(url + "/v1/completions", json={"model": "bert", "prompt": "x"}), 400)
