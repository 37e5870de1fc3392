"""Generations for held-out prompts: side-by-side samples and the style comparison.

The prompts are real test-split prompts (one each of the seeds' tasks first: a theme
passage, a character sketch, a scene description), so the adapter is asked exactly what it
was trained to do, about books it never saw. The base model and every adapter answer each
prompt with the same sampling seed.
"""

from __future__ import annotations

from torch import nn

from lorakit.eval import style
from lorakit.eval.dataset import Row, prompt_ids
from lorakit.infer.batch import Job, generate_all, sampling

SEED_TASKS = ("theme", "character", "scene")


def generate_for_prompts(model: nn.Module, tokenizer, rows: list[Row], targets: list[str], max_new_tokens: int,
                         temperature: float = 0.7, seed: int = 0) -> list[dict]:
    """One entry per prompt row: its task, book, prompt text, reference and each target's output."""
    jobs, index = [], []
    for i, row in enumerate(rows):
        for target in targets:
            jobs.append(Job(prompt_ids(row), target, sampling(max_new_tokens, temperature, seed * 1000 + i)))
            index.append((i, target))
    texts = generate_all(model, tokenizer, jobs)
    out = [{"task": r.task, "book": r.book, "author": r.meta.get("author"),
            "prompt": tokenizer.decode(prompt_ids(r), skip_special_tokens=True).strip(),
            "reference": r.completion.strip(), "outputs": {}} for r in rows]
    for (i, target), text in zip(index, texts):
        out[i]["outputs"][target] = text.strip()
    return out


def side_by_side(generations: list[dict], tasks: tuple[str, ...] = SEED_TASKS, reference_chars: int = 1200) -> list[dict]:
    """The generations for `tasks` (one each, in that order; others if a task is missing)."""
    chosen = [next(g for g in generations if g["task"] == t) for t in tasks if any(g["task"] == t for g in generations)]
    chosen += [g for g in generations if g not in chosen][: max(0, len(tasks) - len(chosen))]
    return [{**g, "reference": g["reference"][:reference_chars]} for g in chosen]


def style_scores(generations: list[dict], targets: list[str], corpus: list[str]) -> dict:
    """Each target's profile distance to the training corpus (and the test references' as a floor)."""
    corpus_profile = style.profile(corpus)
    result: dict = {"corpus": corpus_profile.to_dict(), "targets": {}}
    for target in targets:
        p = style.profile([g["outputs"][target] for g in generations])
        result["targets"][target] = {**style.distance(p, corpus_profile), "profile": p.to_dict()}
    refs = style.profile([g["reference"] for g in generations])
    # real held-out passages by the same authors: how close a generation can be expected to get
    result["reference"] = {**style.distance(refs, corpus_profile), "profile": refs.to_dict()}
    return result
