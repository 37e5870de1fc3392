"""`TrainConfig`: every training setting with its help text, and one precedence rule.

CLI flags > YAML file (``-c config.yaml``) > defaults. The resolved config is written
next to every output (``train_config.yaml``).
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lorakit.atomic import atomic_write
from lorakit.errors import LorakitError, one_line, short_repr
from lorakit.runtime.precision import check_precision
from lorakit.train.virtual_settings import VIRTUAL_METHODS, check_virtual_settings

METHODS = ("lora", "dora", "full", "head", "qlora", *VIRTUAL_METHODS)
TASKS = ("lm", "classify")
SCHEDULES = ("cosine", "linear", "constant")


# numeric settings: (type, lowest allowed, a bound the value must stay below, or None); "+" means
# greater than 0.
# None as a value is allowed only where the default is None (max_steps, threads, loss_chunk; alpha, then 2 x rank;
# batch_size and lr, then the task's own).
NUMBERS: dict[str, tuple[type, float | str, float | None]] = {
    "rank": (int, "+", None), "batch_size": (int, "+", None), "grad_accum": (int, "+", None),
    "max_seq_len": (int, "+", None), "loss_chunk": (int, "+", None), "max_steps": (int, "+", None),
    "eval_batches": (int, "+", None), "log_every": (int, "+", None), "threads": (int, "+", None),
    "warmup": (int, 0, None), "eval_every": (int, 0, None), "save_every": (int, 0, None),
    "keep_checkpoints": (int, 0, None), "virtual_tokens": (int, "+", None), "encoder_hidden_size": (int, "+", None),
    "alpha": (float, "+", None), "lr": (float, "+", None), "epochs": (float, "+", None),
    "dropout": (float, 0, 1.0), "weight_decay": (float, 0, None), "max_grad_norm": (float, 0, None),
}
OPTIONAL = ("max_steps", "threads", "alpha", "loss_chunk", "batch_size", "lr", "virtual_tokens", "encoder_hidden_size")
# batch size and learning rate where not given: the task's (and for classification the method's) usual
# ones. A classification example is one short row, so more of them fill a GEMM; full fine-tuning moves
# every weight and takes the customary ~10x smaller rate (BERT's fine-tuning recipe, Devlin et al., 2019).
# Prefix and prompt tuning train a few vectors in front of the input and take far larger rates: PEFT's
# causal-LM examples use 1e-2 (prefix) and 3e-2 (prompt; Lester et al., 2021, trained at 0.3 with Adafactor).
BATCH_SIZE = {"lm": 4, "classify": 16}
LR = {"lm": {"prefix": 1e-2, "prompt": 3e-2}, "classify": {"full": 5e-5, "prefix": 1e-2, "prompt": 3e-2}}  # method -> rate; others: DEFAULT_LR[task]
DEFAULT_LR = {"lm": 2e-4, "classify": 1e-3}
# on/off settings whose default, None ("auto"), is decided at run time: packing and mask_prompt from the
# data (`lorakit.train.defaults`), grad_checkpoint and release_memory by the speed plan (`lorakit.plan.speed`)
AUTO_SWITCHES = ("packing", "mask_prompt", "grad_checkpoint", "release_memory")


def _check_number(name: str, value: Any, kind: type, low: float | str, high: float | None) -> None:
    """Refuse, in one line, a setting of the wrong type, NaN/infinite, or outside its range."""
    flag = "--" + name.replace("_", "-")
    if value is None and name in OPTIONAL:
        return
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not numeric or (kind is int and not isinstance(value, int)):
        raise LorakitError(f"{flag} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not math.isfinite(value):
        raise LorakitError(f"{flag} must be a finite number, got {value!r}")
    if low == "+" and value <= 0:
        raise LorakitError(f"{flag} must be positive, got {value}")
    if low != "+" and value < low:
        raise LorakitError(f"{flag} must be at least {low}, got {value}")
    if high is not None and value >= high:
        raise LorakitError(f"{flag} must be below {high}, got {value}")


def _yaml_number(name: str, value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: take it as the number it spells for a numeric setting."""
    if name in NUMBERS and NUMBERS[name][0] is float and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value  # refused with its name by _check_number
    return value


def _yaml_error(exc: yaml.YAMLError) -> str:
    """A PyYAML error as one short clause: the problem and where (its own text spans lines and quotes the file)."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or str(exc)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    hint = "; lorakit reads plain YAML: no !!python tags" if "python/" in str(problem) else ""
    return one_line(f"{problem}{where}{hint}", 200)


def _load_yaml(path: Path) -> Any:
    """`yaml.safe_load` of `path` (no tags that build objects), every failure one line naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise LorakitError(f"{path}: not a text file (not UTF-8); pass a YAML file of setting: value") from None
    except OSError as exc:
        raise LorakitError(f"{path}: cannot read the config ({exc.strerror})") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise LorakitError(f"{path}: not valid YAML ({_yaml_error(exc)})") from None
    except RecursionError:
        raise LorakitError(f"{path}: not a config YAML (nested too deep); write one setting: value per line") from None
    except ValueError:  # an integer past Python's int-from-string limit
        raise LorakitError(f"{path}: not a config YAML (a number with too many digits); fix the number") from None


def _yaml_type_problem(name: str, value: Any, default: Any) -> str | None:
    """Why `value` cannot be setting `name` (None when it can); numbers are checked by type only here."""
    if name in NUMBERS:
        if value is None and name in OPTIONAL:
            return None
        kind = NUMBERS[name][0]
        ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        return None if ok and not isinstance(value, bool) else f"must be {'an integer' if kind is int else 'a number'}"
    if name in AUTO_SWITCHES:
        return None if value is None or isinstance(value, bool) or value == "auto" else "must be true, false or auto"
    if isinstance(default, bool):
        return None if isinstance(value, bool) else "must be true or false"
    if isinstance(default, int):
        return None if isinstance(value, int) and not isinstance(value, bool) else "must be an integer"
    if value is None and default is None:
        return None
    return None if isinstance(value, str) else "must be a string (quote it)"


def read_yaml_settings(path: Path, known: dict[str, Any]) -> dict[str, Any]:
    """The settings in a ``-c`` YAML file, each of the type its field declares; refused in one line naming
    the file and the setting. `known` maps field names to their dataclass fields."""
    loaded = _load_yaml(path)
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise LorakitError(f"{path}: expected a mapping of setting: value, got {type(loaded).__name__}")
    values: dict[str, Any] = {}
    for key, value in loaded.items():
        if not isinstance(key, str):
            raise LorakitError(f"{path}: {short_repr(key)} is not a setting name; setting names are words "
                               "like rank or lr (see `lorakit train --help`)")
        name = key.replace("-", "_")
        if name == "speed_plan":  # an earlier run's resolved plan (train_config.yaml): resolved anew
            continue
        if name not in known:
            raise LorakitError(f"{path}: unknown setting {short_repr(key)}; see `lorakit train --help`")
        value = _yaml_number(name, value)
        problem = _yaml_type_problem(name, value, known[name].default)
        if problem is not None:  # numbers worded as their flag's own check words them
            what = f"setting '{name}': --{name.replace('_', '-')}" if name in NUMBERS else f"setting '{name}'"
            raise LorakitError(f"{path}: {what} {problem}, got {short_repr(value)}")
        if name in NUMBERS:  # the range checks TrainConfig makes, here to name the file
            try:
                _check_number(name, value, *NUMBERS[name])
            except LorakitError as exc:
                raise LorakitError(f"{path}: setting '{name}': {exc}") from None
        values[name] = value
    return values


def _f(default: Any, help: str, **kw) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Settings of one training run (names follow mlx-lm and Axolotl where they have one)."""

    model: str | None = _f(None, "HF directory, .gguf file, alias or Hub id org/name[@revision] (default smollm2-135m-instruct)")
    data: str | None = _f(None, "dataset directory with train.jsonl (and valid.jsonl) from `lorakit data prepare`")
    out: str | None = _f(None, "output directory: adapter, checkpoints, metrics.jsonl, loss.png")
    task: str = _f("lm", "lm (next-token loss) | classify (a sequence classifier on a dataset from `lorakit data "
                         "prepare --task classify`, one output per class of its report.json)")
    method: str = _f("lora", "lora | dora | full (all weights) | head (output head only; with --task classify, "
                             "the classifier head) | qlora (4-bit base) | prefix (prefix tuning: trained key/value "
                             "pairs in every layer) | prompt (prompt tuning: trained embeddings before the input); "
                             "prefix and prompt save PEFT's PREFIX_TUNING / PROMPT_TUNING adapters (with --task classify "
                             "the classifier head trains beside them, as PEFT's SEQ_CLS)")
    rank: int = _f(16, "LoRA rank r")
    alpha: float | None = _f(None, "LoRA alpha (default 2 x rank)")
    dropout: float = _f(0.0, "dropout on the LoRA path")
    targets: str = _f("all-linear", "all-linear | attention | mlp | comma-separated module names | regex")
    rslora: bool = _f(False, "rank-stabilised scaling alpha/sqrt(r)")
    virtual_tokens: int | None = _f(None, "--method prefix/prompt: how many virtual tokens N (prefix: key/value "
                                          "pairs per layer; prompt: embeddings before the input; default 20)")
    prefix_projection: bool = _f(False, "--method prefix: train the prefix through PEFT's two-layer tanh MLP "
                                        "(the adapter saves the MLP's output only, so it cannot train on later)")
    encoder_hidden_size: int | None = _f(None, "--method prefix --prefix-projection: the MLP's hidden width "
                                               "(default: the width of one layer's keys)")
    prompt_init: str = _f("random", "--method prompt: how the prompt starts: random | text (the embeddings of "
                                    "--prompt-init-text's tokens, repeated or cut to N, PEFT's TEXT init) | "
                                    "sample_vocab (the embeddings of N random vocabulary tokens)")
    prompt_init_text: str | None = _f(None, "--method prompt --prompt-init text: the text, e.g. a task "
                                            "description, tokenized by the model's tokenizer")
    batch_size: int | None = _f(None, "samples (or packed rows) per micro-batch (default 4; --task classify: 16)")
    grad_accum: int = _f(1, "micro-batches per optimizer step")
    max_steps: int | None = _f(None, "optimizer steps (default: --epochs worth)")
    epochs: float = _f(1.0, "passes over train.jsonl when --max-steps is not given")
    lr: float | None = _f(None, "peak learning rate (AdamW; default 2e-4; prefix 1e-2, prompt 3e-2; "
                                "--task classify: 1e-3, full 5e-5, prefix 1e-2, prompt 3e-2)")
    schedule: str = _f("cosine", "cosine | linear | constant, after warmup")
    warmup: int = _f(10, "linear warm-up steps")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    max_grad_norm: float = _f(1.0, "clip the global gradient norm to this (0: no clipping)")
    max_seq_len: int = _f(512, "longer samples are truncated (counted), or refused with --strict")
    strict: bool = _f(False, "refuse samples longer than --max-seq-len instead of truncating")
    packing: bool | None = _f(None, "pack several samples per row without cross-attention (no padding waste). "
                                    "Default auto: on when it cuts the rows computed by a tenth or more")
    mask_prompt: bool | None = _f(None, "completion-only loss: prompt tokens are not predicted. Default auto: on "
                                        "when the samples have prompts (prompt/completion or chat data)")
    grad_checkpoint: bool | None = _f(None, "recompute each layer's activations in backward: less memory, one "
                                             "more forward pass of compute. Default auto: on for qlora (a method "
                                             "chosen for memory), off otherwise")
    loss_chunk: int | None = _f(None, "most tokens per chunk of the memory-lean cross-entropy (default: as many as "
                                      "keep one chunk's logits within 2^26 values, so large vocabularies take "
                                      "smaller chunks)")
    eval_every: int = _f(0, "evaluate on valid.jsonl every N steps (0: only at the end)")
    eval_batches: int = _f(20, "batches of valid.jsonl per evaluation")
    save_every: int = _f(0, "write a resumable checkpoint every N steps (0: only at the end)")
    keep_checkpoints: int = _f(2, "how many recent checkpoints to keep")
    log_every: int = _f(1, "write a metrics.jsonl line every N steps")
    seed: int = _f(0, "seed for adapter init, data order and dropout")
    resume: str | None = _f(None, "resume from this checkpoint directory, or 'auto' for OUT's latest")
    device: str = _f("auto", "auto | cpu | cuda | mps")
    threads: int | None = _f(None, "CPU threads (default: physical cores)")
    fuse: bool = _f(True, "fuse frozen q/k/v and gate/up projections into single GEMMs where the model family "
                          "allows it (faster on CPU)")
    lean_memory: bool = _f(True, "lower peak RSS: recompute norm outputs and the gated MLP product in backward "
                                 "instead of storing them (where the family allows it), keep weights in private memory")
    release_memory: bool | None = _f(None, "return freed memory to the OS at once (1 MB mmap threshold, heap "
                                            "trimmed after each step): a lower peak RSS for fewer tokens/s (a page "
                                            "fault on every fresh tensor; bench/RESULTS.md). Default auto: on for "
                                            "qlora, off otherwise")
    compile: bool = _f(False, "torch.compile each decoder layer (replaces --fuse and --lean-memory, whose "
                              "Python-side caching breaks the graphs); a longer first step; pays most with "
                              "--precision bf16 (bench/RESULTS.md)")
    precision: str = _f("auto", "fp32 | bf16 | int8 | auto: bf16 mixed precision (bf16 GEMMs; adapter weights, "
                                "optimizer and loss in fp32) is several times faster where the chip runs bf16 "
                                "natively (AVX512-BF16/AMX, recent GPUs) and far slower where it does not; int8 "
                                "(CPU; lora, dora, head) runs the frozen projections' GEMMs in int8 with "
                                "per-token scales, for CPUs without native bf16 (AVX2); auto (the default) picks bf16 where a "
                                "probe, measured once per machine, finds it native, else fp32")
    attention: str | None = _f(None, "attention implementation: transformers' (eager, sdpa, ...) or "
                                     "eager_recompute (eager's values, its T x T probabilities recomputed in "
                                     "backward, not kept). Default: eager_recompute for --compile with bf16 on a "
                                     "CPU, else the model's own (sdpa where supported). eager keeps the "
                                     "probabilities: faster on long rows, more memory (bench/RESULTS.md)")
    progress: bool = _f(True, "live progress bar")

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise LorakitError(f"--method {self.method!r}: use one of {', '.join(METHODS)}")
        if self.task not in TASKS:
            raise LorakitError(f"--task {self.task!r}: use one of {', '.join(TASKS)}")
        check_precision(self.precision)
        for name in AUTO_SWITCHES:
            value = getattr(self, name)
            if value == "auto":
                setattr(self, name, None)
            elif value is not None and not isinstance(value, bool):
                raise LorakitError(f"--{name.replace('_', '-')} is on or off (or auto), got {short_repr(value)}")
        if self.schedule not in SCHEDULES:
            raise LorakitError(f"--schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        for name, (kind, low, high) in NUMBERS.items():
            _check_number(name, getattr(self, name), kind, low, high)
        if self.alpha is None:
            self.alpha = 2.0 * self.rank
        if self.batch_size is None:
            self.batch_size = BATCH_SIZE[self.task]
        if self.lr is None:
            self.lr = LR[self.task].get(self.method, DEFAULT_LR[self.task])
        check_virtual_settings(self)  # prefix/prompt settings (`lorakit.train.virtual_settings`)
        if self.task == "classify":
            self._classify_settings()

    def _classify_settings(self) -> None:
        """What a classification run cannot take; packing and the prompt mask do not apply (off)."""
        if self.method == "qlora":
            raise LorakitError("--method qlora --task classify: the 4-bit loader builds causal LMs only; "
                               "use --method lora (or dora, full, head)")
        for name in ("packing", "mask_prompt"):
            if getattr(self, name):
                raise LorakitError(f"--{name.replace('_', '-')} applies to --task lm: a classification batch "
                                   "holds one example per row and its loss is on the class")
            setattr(self, name, False)

    @classmethod
    def resolve(cls, yaml_path: str | None, cli: dict[str, Any]) -> "TrainConfig":
        """Defaults, overridden by the YAML file, overridden by flags given on the command line."""
        known_fields = {f.name: f for f in fields(cls)}
        from_file = read_yaml_settings(Path(yaml_path), known_fields) if yaml_path else {}
        values: dict[str, Any] = {**from_file, **cli}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise LorakitError(f"unknown setting {unknown[0]!r}{' in ' + yaml_path if yaml_path else ''}; "
                               f"see `lorakit train --help`")
        try:
            return cls(**values)
        except LorakitError as exc:  # a value from the file (e.g. an unknown schedule): name the file
            flags = [n for n in from_file if n not in cli and str(exc).startswith(f"--{n.replace('_', '-')} ")]
            if flags:
                raise LorakitError(f"{yaml_path}: setting '{flags[0]}': {exc}") from None
            raise

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def speed_settings(self) -> dict[str, Any]:
        """The options `lorakit.plan.speed.resolve_speed` turns into the run's speed plan."""
        return {name: getattr(self, name) for name in ("method", "precision", "compile", "fuse", "lean_memory",
                                                        "attention", "grad_checkpoint", "release_memory")}

    def write(self, out_dir: str | Path, name: str = "train_config.yaml", speed_plan: dict | None = None) -> Path:
        """Write the resolved config atomically next to the outputs, with the resolved speed plan."""
        data = {**self.to_dict(), **({"speed_plan": speed_plan} if speed_plan is not None else {})}
        return atomic_write(Path(out_dir) / name, yaml.safe_dump(data, sort_keys=False))

    @classmethod
    def cli_fields(cls):
        """(name, default, help) of every field, for argparse."""
        for f in fields(cls):
            default = f.default if f.default is not MISSING else None
            yield f.name, default, f.metadata.get("help", "")
