"""`lorakit compare --task classify` on a tiny BERT: every method for the same epochs in a fresh process,
scored on test.jsonl as `lorakit eval --task classify` scores it; a self-contained report; bad input is
one line and writes nothing."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re

import pytest

from lorakit.classifier import load_classifier
from lorakit.cli import main
from lorakit.eval.classify import run_classify_eval
from lorakit.eval.compare import CLASSIFY_METHODS as METHODS
from lorakit.eval.compare_classify import train_settings, trainable_counts
from lorakit.train.config import TrainConfig
from tests.train.classify_data import CLASSES, prepare, save_tiny, write_records

# both kinds of saved output (a model, an adapter), LoRA and DoRA, and virtual tokens with the head beside them
CHOSEN = ("full", "lora-r4", "dora-r8", "prompt-n20")


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A tiny BERT, a classification dataset and one comparison through the CLI (stdout kept)."""
    root = tmp_path_factory.mktemp("compare-classify")
    save_tiny("bert", root / "bert")
    prepare(write_records(root / "records.jsonl", seed=3), root / "data", root / "bert")
    out = root / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["compare", "--task", "classify", "--model", str(root / "bert"), "--data", str(root / "data"),
                     "--out", str(out), "--methods", ",".join(CHOSEN), "--epochs", "1.5", "--batch-size", "8",
                     "--max-seq-len", "64", "--threads", "1", "--precision", "fp32"])
    assert code == 0
    return root, out, json.loads((out / "compare.json").read_text()), printed.getvalue()


def _lines(path) -> int:
    return sum(1 for line in path.read_text().splitlines() if line.strip())


def test_every_method_once_for_the_same_epochs_at_its_own_rate(compared):
    root, out, result, _ = compared
    assert [r["name"] for r in result["runs"]] == list(CHOSEN)
    steps = math.ceil(1.5 * (_lines(root / "data" / "train.jsonl") // 8))  # train's count: whole batches of 8
    assert result["epochs"] == 1.5 and result["steps"] == steps
    for r in result["runs"]:
        assert r["steps"] == steps
        assert r["lr"] == TrainConfig(task="classify", method=r["method"]).lr  # train's own rate for the method
        config = (out / "runs" / r["name"] / "train_config.yaml").read_text()
        assert "task: classify" in config and f"method: {r['method']}" in config
    lr = {r["name"]: r["lr"] for r in result["runs"]}
    assert lr["full"] < lr["lora-r4"] == lr["dora-r8"] < lr["prompt-n20"]  # each method at its own rate


def test_one_lr_overrides_every_methods_own():
    common = dict(model_spec=None, data_dir="d", out="o", steps=None, epochs=1.0, planned=50, batch_size=16,
                  max_seq_len=128, seed=0, threads=None, precision="fp32")
    for m in METHODS:
        assert train_settings(m, lr=0.0123, **common)["lr"] == 0.0123
        assert train_settings(m, lr=None, **common)["lr"] == TrainConfig(task="classify", method=m.method).lr


def test_trainable_parameters(compared):
    root, _, result, _ = compared
    counts = {m.name: trainable_counts(str(root / "bert"), list(CLASSES), m) for m in METHODS}
    model, _ = load_classifier(root / "bert", list(CLASSES), with_tokenizer=False)
    total = sum(p.numel() for p in model.parameters())
    assert {c[1] for c in counts.values()} == {total} == {result["base"]["params"]}
    t = {name: c[0] for name, c in counts.items()}
    assert t["full"] == total
    assert t["head"] < t["lora-r4"] < t["lora-r8"] < t["lora-r16"] < t["full"]
    assert t["lora-r16"] - t["lora-r8"] == 2 * (t["lora-r8"] - t["lora-r4"])  # LoRA's parameters grow with r
    assert t["dora-r8"] > t["lora-r8"]  # + a magnitude per output feature
    hidden, layers = model.config.hidden_size, model.config.num_hidden_layers
    assert t["prompt-n20"] == t["head"] + 20 * hidden  # 20 embeddings beside the head
    assert t["prefix-n20"] == t["head"] + 20 * layers * 2 * hidden  # 20 keys and values a layer
    for r in result["runs"]:
        assert r["trainable"] == t[r["name"]]
        assert r["trainable_pct"] == pytest.approx(100.0 * t[r["name"]] / total)
    assert next(r for r in result["runs"] if r["name"] == "full")["trainable_pct"] == 100.0


def test_scores_are_run_classify_eval_of_each_saved_output(compared):
    root, out, result, _ = compared
    n_test = _lines(root / "data" / "test.jsonl")
    assert result["test_examples"] == n_test
    for r in result["runs"]:
        run = out / "runs" / r["name"]
        if r["method"] in ("full", "head"):  # the run folder is a model of its own
            expected = run_classify_eval(str(run), None, root / "data", **result["eval"])
        else:
            expected = run_classify_eval(str(root / "bert"), run, root / "data", **result["eval"])
        assert (r["accuracy"], r["macro_f1"], r["confusion_matrix"]) == (
            expected["accuracy"], expected["macro_f1"], expected["confusion_matrix"])
        assert sum(map(sum, r["confusion_matrix"])) == r["test_examples"] == n_test
        assert r["accuracy"] == sum(r["confusion_matrix"][i][i] for i in range(len(CLASSES))) / n_test
    # some run's answers spread over the classes, so the equality is not that of two constant answers
    assert any(sum(1 for col in zip(*r["confusion_matrix"]) if sum(col)) > 1 for r in result["runs"])


def test_measurements_and_saved_sizes(compared):
    _, out, result, _ = compared
    runs = {r["name"]: r for r in result["runs"]}
    for r in result["runs"]:
        assert r["peak_rss_mb"] > 50 and r["train_seconds"] > 0
        run = out / "runs" / r["name"]
        files = run.glob("*.safetensors") if r["method"] in ("full", "head") else [run / "adapter_model.safetensors"]
        assert r["saved_bytes"] == sum(f.stat().st_size for f in files) > 0
    assert runs["lora-r4"]["saved_bytes"] < runs["dora-r8"]["saved_bytes"] < runs["full"]["saved_bytes"]


def test_report_html_has_each_method_and_its_confusion_matrix(compared):
    _, out, result, _ = compared
    html = (out / "compare.html").read_text()
    sources = re.findall(r'src="([^"]+)"', html)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", html)
    assert not any(ref in text for ref in ("http:", "https:", "//", "href=", "<script"))
    for r in result["runs"]:
        assert html.count(f'<td class="l">{r["name"]}</td>') == 1  # its row of the table
        tables = re.findall(rf'<table data-method="{re.escape(r["name"])}">(.*?)</table>', html)
        assert len(tables) == 1
        cells = [int(n) for n in re.findall(r'<td class="cm"[^>]*>(\d+)</td>', tables[0])]
        assert len(cells) == len(CLASSES) ** 2
        assert cells == sum(r["confusion_matrix"], [])
        assert sum(cells) == result["test_examples"]


def test_cli_prints_one_line_per_method_and_the_report(compared):
    _, out, result, printed = compared
    lines = printed.strip().splitlines()
    assert lines[-1] == f"report: {out / 'compare.html'}"
    rows = lines[1:-1]
    assert [line.split()[0] for line in rows] == list(CHOSEN)
    for line, r in zip(rows, result["runs"]):
        assert f"{r['accuracy']:.4f}" in line.split() and f"{r['trainable']:,}" in line.split()


def _refused(argv: list[str], match: str, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("lorakit: error:"), err
    assert match in err, err


def test_bad_input_is_one_line_and_writes_nothing(compared, tmp_path, capsys):
    from tests.train.conftest import write_dataset

    root = compared[0]
    out = tmp_path / "report"
    lm = write_dataset(tmp_path / "lm")
    model, data = ["--model", str(root / "bert")], ["--data", str(root / "data"), "--out", str(out)]
    _refused(["compare", "--task", "classify", *model, "--data", str(lm), "--out", str(out), "--steps", "1"],
             "has no report.json", capsys)
    _refused(["compare", *model, *data, "--steps", "1"], "is a classification dataset", capsys)
    _refused(["compare", "--task", "classify", *model, *data, "--epochs", "1", "--steps", "2"],
             "give one of --epochs, --steps or --budget-minutes", capsys)
    _refused(["compare", *model, "--data", str(lm), "--out", str(out), "--epochs", "1"],
             "--epochs applies to --task classify", capsys)
    _refused(["compare", "--task", "classify", *model, *data, "--batch-size", "1000"],
             "cannot fill one batch of --batch-size 1000", capsys)
    assert not out.exists()

