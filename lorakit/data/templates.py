"""Style-task prompts built from a passage and its metadata (deterministic, varied wording).

Every completion is the real passage; the prompt asks for it: continue the opening of the
passage, describe its scene, sketch its main character, or explore its themes. What the
prompt mentions (a name, a place, themes) is read from the passage itself.
"""

from __future__ import annotations

import random
import re
from collections import Counter

from lorakit.data.textutil import words

TEMPLATES: dict[str, list[str]] = {
    "continue": [
        "Continue this passage in the style of {author}:\n\n{context}",
        "Here is the opening of a passage from {title}. Continue it as {author} would:\n\n{context}",
        "Write what comes next, keeping the voice of {author}{translated}:\n\n{context}",
        "Carry on the following text in the manner of {author}:\n\n{context}",
        "Read this excerpt from {title} and continue the story:\n\n{context}",
    ],
    "scene": [
        "Write a scene description in the style of {author}{hint}.",
        "Describe a scene{hint}, as {author} might have written it in {title}.",
        "In the prose style of {author}, write a descriptive passage{hint}.",
        "Compose a scene{hint} in the manner of {author}{translated}.",
    ],
    "character": [
        "Write a character sketch of {name} in the style of {author}.",
        "Describe {name}, a character in {title}, as {author} would.",
        "In the voice of {author}, write a passage that brings {name} to life.",
        "Write a short portrait of {name} in the manner of {author}{translated}.",
    ],
    "theme": [
        "Write a passage in the style of {author} that explores {themes}.",
        "Touching on {themes}, write a passage as {author} might have.",
        "Write prose in the manner of {author}, from {title}, about {themes}.",
        "Explore {themes} in a passage written in the voice of {author}.",
    ],
}
TASK_WEIGHTS = {"continue": 3, "scene": 3, "character": 3, "theme": 3}

THEMES: dict[str, tuple[str, ...]] = {
    "love": ("love", "loved", "loves", "loving", "beloved", "passion", "kiss", "kissed", "tenderness"),
    "death": ("death", "die", "died", "dying", "dead", "grave", "funeral", "coffin", "corpse", "murder"),
    "faith": ("god", "faith", "pray", "prayer", "prayed", "church", "sin", "soul", "christ", "holy", "believe"),
    "money and poverty": ("money", "roubles", "rubles", "poor", "poverty", "debt", "debts", "rich", "wealth", "kopecks"),
    "family": ("father", "mother", "son", "daughter", "brother", "sister", "wife", "husband", "children", "family"),
    "war": ("war", "soldier", "soldiers", "army", "battle", "regiment", "enemy", "cannon", "wounded", "troops"),
    "guilt and crime": ("crime", "guilt", "guilty", "confess", "confession", "punishment", "criminal", "police", "prison"),
    "class and society": ("prince", "princess", "countess", "peasant", "peasants", "society", "nobleman", "servants",
                          "serfs"),
    "nature": ("sky", "sun", "trees", "forest", "fields", "river", "snow", "wind", "grass", "birds", "meadow"),
    "suffering": ("suffer", "suffering", "suffered", "pain", "tears", "wept", "misery", "despair", "anguish"),
    "jealousy": ("jealous", "jealousy", "rival"),
    "freedom": ("free", "freedom", "liberty"),
}
_THEME_OF = {w: theme for theme, ws in THEMES.items() for w in ws}
PLACES = ("drawing-room", "ballroom", "garden", "street", "church", "prison", "station", "train", "forest", "river",
          "village", "study", "inn", "tavern", "courtroom", "steppe", "estate", "carriage", "monastery", "theatre",
          "market", "road", "kitchen", "bedroom", "shore", "hut", "bridge", "field", "room", "house")
TIMES = {"night": "at night", "evening": "in the evening", "morning": "in the morning", "winter": "in winter",
         "summer": "in summer", "spring": "in spring", "autumn": "in autumn"}
NOT_NAMES = frozenset(
    """I I'm I've I'll The A An But And Or If He She It They We You His Her Its Their Our Your My This That These
    Those What Why How When Where Who Which Yes No Oh Ah Well So Then There Here Now Not All God Lord Christ Heaven
    Sir Madam Mr Mrs Monsieur Madame Mademoiselle Russian Russia Russians French English German Germans Moscow
    Petersburg St Saint Sunday Monday Tuesday Wednesday Thursday Friday Saturday January February March April May
    June July August September October November December Excellency Honour Honor Highness Majesty Christmas Easter
    Prince Princess Count Countess General Captain Colonel Madam Father Mother Uncle Aunt Doctor""".split()
)
CAP_SEQ_RE = re.compile(r"[A-Z][a-zà-ÿ’'\-]+(?:\s+[A-Z][a-zà-ÿ’'\-]+){0,2}")


def main_character(text: str) -> str | None:
    """The most mentioned name (capitalised words not starting a sentence), if mentioned twice or more."""
    counts: Counter = Counter()
    for m in CAP_SEQ_RE.finditer(text):
        before = text[: m.start()].rstrip()[-1:]
        if not before or before in ".!?:;“\"‘'—(\n":
            continue  # sentence-initial: capitalised for grammar, not because it is a name
        parts = [p.rstrip("’'") for p in m.group(0).split()]
        while parts and parts[0] in NOT_NAMES and len(parts) > 1 and parts[1] in NOT_NAMES:
            parts.pop(0)
        if not parts or all(p in NOT_NAMES for p in parts):
            continue
        counts[" ".join(parts)] += 1
    if not counts:
        return None
    name, n = counts.most_common(1)[0]
    return name if n >= 2 else None


def themes_of(text: str) -> list[str]:
    """Up to two themes the passage dwells on (2+ theme words each), most present first."""
    counts = Counter(_THEME_OF[w] for w in words(text) if w in _THEME_OF)
    return [t for t, n in counts.most_common(2) if n >= 2]


def scene_hint(text: str) -> str | None:
    """' set in a garden in the evening'-style hint for descriptive passages, else None."""
    paras = text.split("\n\n")
    dialogue = sum(1 for p in paras if p[:1] in "\"“‘'") / len(paras)
    if dialogue > 0.4:
        return None
    ws = words(text)
    counts = Counter(w for w in ws if w in PLACES)
    place = max(PLACES, key=lambda p: (counts[p], -PLACES.index(p))) if counts else None
    when = next((TIMES[w] for w in TIMES if w in counts or w in set(ws)), None)
    if not place and not when:
        return None
    return (f" set in a {place}" if place else "") + (f" {when}" if when else "")


def plan(passage_paras: list[str], meta: dict, rng: random.Random) -> tuple[str, str, list[str]]:
    """Choose a task and its prompt for a passage: returns (task, instruction, completion paragraphs)."""
    text = "\n\n".join(passage_paras)
    fill = {
        "author": meta.get("author") or "the author",
        "title": meta.get("title") or "the book",
        "translated": f" (translated by {meta['translator']})" if meta.get("translator") else "",
    }
    options: dict[str, dict] = {}
    split = _continue_split(passage_paras)
    if split:
        context, rest = split
        options["continue"] = {"context": "\n\n".join(context), "completion": rest}
    name = main_character(text)
    if name:
        options["character"] = {"name": name}
    themes = themes_of(text)
    if themes:
        options["theme"] = {"themes": " and ".join(themes)}
    hint = scene_hint(text)
    if hint:
        options["scene"] = {"hint": hint}
    if not options:  # a short passage with nothing to point at: ask for a scene in general
        options["scene"] = {"hint": ""}
    tasks = sorted(options)
    task = rng.choices(tasks, weights=[TASK_WEIGHTS[t] for t in tasks])[0]
    extra = dict(options[task])
    completion = extra.pop("completion", passage_paras)
    instruction = rng.choice(TEMPLATES[task]).format(**fill, **extra)
    return task, instruction, completion


def _continue_split(paras: list[str]) -> tuple[list[str], list[str]] | None:
    """Opening (about a quarter of the passage) and the rest; None when too short to split."""
    if len(paras) >= 2:
        total = sum(len(p) for p in paras)
        acc, k = 0, 0
        while k < len(paras) - 1 and acc < total * 0.25:
            acc += len(paras[k])
            k += 1
        # the completion must stay the larger part, or the sample teaches little
        return (paras[:k], paras[k:]) if acc <= total * 0.6 else None
    sentences = re.split(r"(?<=[.!?])\s+(?=[A-Z“\"‘])", paras[0]) if paras else []
    if len(sentences) < 4:
        return None
    k = max(1, len(sentences) // 4)
    return [" ".join(sentences[:k])], [" ".join(sentences[k:])]
