"""Training text the project makes itself: tiny stories from a probabilistic grammar, lesson 17.

No download, no license, no surprise: every character of the corpus comes from the templates
and word lists below, drawn with a seeded generator, so the same seed gives the same corpus on
every machine. The grammar is small enough to read in a minute and rich enough that a model
must learn real structure to predict it:

    Once upon a time, there was a brave girl named Mia. One day, she went to the lake with her
    dad. She saw an old kite. "Can I have the kite?" asked Mia. Mia and Leo danced in the park.
    They were happy. At the end of the day, she went home. The end.

"Grammatical" is checkable, because the rules the generator obeys are written down
(`check_story`):

1. every sentence matches one of the templates (so "They was" or "She saw a" never parse);
2. `a`/`an` agrees with the next word (an apple, a big apple);
3. every he/she/his/her/him and boy/girl agrees with the main character (named in the intro);
4. `the THING` refers to a thing introduced earlier with a/an, and only the main character or
   a friend already introduced speaks.

A model's samples can then be scored sentence by sentence (`grammar_report`).

Also here: the character-level tokenizer, the train/validation split, the batch sampler and the
unigram baseline (the loss a model gets by knowing only how often each character occurs).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .. import checks
from ..errors import ConfigError, ShapeError, TokenizerError
from ..random import _gen

# --------------------------------------------------------------------------------------------
# The grammar: word lists and templates
# --------------------------------------------------------------------------------------------
NAMES = {"Tom": "he", "Ben": "he", "Sam": "he", "Max": "he", "Leo": "he", "Tim": "he",
         "Lily": "she", "Mia": "she", "Anna": "she", "Sue": "she", "Emma": "she", "Zoe": "she"}
KIND = {"he": "boy", "she": "girl"}
PRONOUNS = {  # slot -> gender -> word
    "Pron": {"he": "He", "she": "She"}, "pron": {"he": "he", "she": "she"},
    "Poss": {"he": "His", "she": "Her"}, "poss": {"he": "his", "she": "her"},
    "obj": {"he": "him", "she": "her"}, "kind": KIND,
}
WORDS = {
    "kadj": ["little", "kind", "brave", "shy", "eager", "happy"],  # before boy/girl
    "place": ["park", "forest", "beach", "garden", "river", "farm", "lake", "hill", "market", "zoo"],
    "thing": ["ball", "kite", "apple", "egg", "owl", "box", "umbrella", "cat", "dog", "bird", "flower",
              "hat", "orange", "boat", "bug"],
    "adj": ["big", "small", "red", "blue", "shiny", "old", "funny", "yellow", "empty", "odd"],
    "feeling": ["happy", "sad", "scared", "tired", "excited", "angry", "proud", "calm"],
    "action": ["played", "ran", "jumped", "sang", "danced", "laughed", "rested"],
    "family": ["mom", "dad", "friend", "sister", "brother", "grandma"],
}

# The templates, by part of the story. {a} is an article that agrees with the next word;
# {thing} introduces a thing, {the_thing} names one introduced before; {Name} is the main
# character, {Name2} a friend, {Speaker} either of them (once the friend has appeared).
INTRO = [
    "Once upon a time, there was {a} {kadj} {kind} named {Name}.",
    "{Name} was {a} {kadj} {kind} who lived near the {place}.",
]
SETTING = [
    "One day, {Name} went to the {place}.",
    "One day, {pron} went to the {place} with {poss} {family}.",
    "{Name} lived near the {place} with {poss} {family}.",
]
MIDDLE = [
    "{Pron} saw {a} {adj} {thing}.",
    "{Pron} found {a} {thing} under a tree.",
    "{Pron} was very {feeling}.",
    "{Pron} {action} all day.",
    "{Name} and {Name2} {action} in the {place}.",
    "They were {feeling}.",
    "\"I like the {the_thing},\" said {Speaker}.",
    "\"Can I have the {the_thing}?\" asked {Speaker}.",
    "{Poss} {family} gave {obj} {a} {thing}.",
    "{Pron} gave the {the_thing} to {poss} {family}.",
]
ENDING = [
    "At the end of the day, {pron} went home.",
    "{Name} was {feeling} and smiled.",
    "{Name} {action} with {poss} {family}.",
]
THE_END = "The end."
TEMPLATES = INTRO + SETTING + MIDDLE + ENDING + [THE_END]

_SLOT = re.compile(r"\{(\w+)\}")
_VOWELS = "aeiou"


def _article(word: str) -> str:
    return "an" if word[0] in _VOWELS else "a"


# --------------------------------------------------------------------------------------------
# Generating
# --------------------------------------------------------------------------------------------
# lesson 17: begin (grammar)
def generate_story(rng: np.random.Generator, log_probs: list | None = None) -> str:
    """One story: an intro, a setting, 2 to 5 middle sentences, an ending, sometimes "The end."

    A story keeps a little state so its sentences agree: the main character and their gender,
    the friend (once met), the things introduced so far. If `log_probs` is a list, the log
    probability of every choice made is appended to it (see `grammar_entropy`).
    """
    def pick(options):  # uniform choice (one rng.random() call costs less than half of an rng.integers())
        if log_probs is not None:
            log_probs.append(-np.log(len(options)))
        return options[int(rng.random() * len(options))]

    main = pick(list(NAMES))
    gender = NAMES[main]
    state = {"friend": None, "things": []}

    def fill(template: str) -> str:
        words = {}
        for slot in _SLOT.findall(template):
            if slot in PRONOUNS:
                words[slot] = PRONOUNS[slot][gender]
            elif slot == "Name":
                words[slot] = main
            elif slot == "Name2":
                if state["friend"] is None:
                    state["friend"] = pick([n for n in NAMES if n != main])
                words[slot] = state["friend"]
            elif slot == "Speaker":
                words[slot] = pick([main] + ([state["friend"]] if state["friend"] else []))
            elif slot == "the_thing":
                words[slot] = pick(sorted(set(state["things"])))
            elif slot == "a":
                words[slot] = "{a}"  # decided below, once the next word is known
            else:
                words[slot] = pick(WORDS[slot])
                if slot == "thing":
                    state["things"].append(words[slot])
        text = template.format(**words)
        # a/an agrees with the word that follows it
        return re.sub(r"\{a\} (\w+)", lambda m: f"{_article(m.group(1))} {m.group(1)}", text)

    def allowed(template: str) -> bool:
        return "{the_thing}" not in template or bool(state["things"])

    sentences = [fill(pick(INTRO)), fill(pick(SETTING))]
    for _ in range(pick([2, 3, 4, 5])):
        sentences.append(fill(pick([t for t in MIDDLE if allowed(t)])))
    sentences.append(fill(pick(ENDING)))
    if pick([True, False]):  # half the stories end with "The end."
        sentences.append(THE_END)
    return " ".join(sentences)
# lesson 17: end (grammar)


def generate_stories(n: int, seed: int = 0) -> list[str]:
    """`n` stories, the same ones for the same seed (NumPy's PCG64 stream is stable across versions)."""
    rng = np.random.default_rng(seed)
    return [generate_story(rng) for _ in range(n)]


def grammar_entropy(n: int = 2000, seed: int = 0) -> float:
    """The grammar's own entropy per character (nats), estimated over `n` stories and their newlines.

    -sum log p(choices) / characters: the loss of a model that knew the grammar exactly, the floor
    no model can go below on average. (Exact for this grammar: each story has one derivation.)
    """
    rng = np.random.default_rng(seed)
    log_probs, chars = [], 0
    for _ in range(n):
        chars += len(generate_story(rng, log_probs)) + 1  # + the newline after it
    return float(-np.sum(log_probs) / chars)


# --------------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------------
def _slot_pattern(slot: str) -> str:
    if slot in PRONOUNS:
        words = sorted(set(PRONOUNS[slot].values()))
    elif slot in ("Name", "Name2", "Speaker"):
        words = list(NAMES)
    elif slot == "a":
        words = ["a", "an"]
    elif slot == "the_thing":
        words = WORDS["thing"]
    else:
        words = WORDS[slot]
    return "(?P<%s>%s)" % (slot, "|".join(map(re.escape, words)))


def _compile(template: str) -> re.Pattern:
    parts, last = [], 0
    for m in _SLOT.finditer(template):
        parts.append(re.escape(template[last:m.start()]))
        parts.append(_slot_pattern(m.group(1)))
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts) + r"\Z")


_COMPILED = [(t, _compile(t)) for t in TEMPLATES]


def split_sentences(story: str) -> list[str]:
    """Sentences end with '.', the only sentence-final mark the grammar uses ('?' sits inside quotes)."""
    return [s for s in re.split(r"(?<=\.) ", story.strip()) if s]


def check_story(story: str) -> list[str]:
    """Every way `story` breaks the grammar (an empty list means it is grammatical).

    Checks, per sentence: it matches a template; a/an agrees with the next word; gendered words
    agree with the main character; `the THING` was introduced before; speakers and {Name} slots
    name the main character or the friend as the templates require.
    """
    problems = []
    sentences = split_sentences(story)
    main = gender = friend = None
    things: list[str] = []
    for i, s in enumerate(sentences):
        match = next(((t, m) for t, pat in _COMPILED if (m := pat.match(s))), None)
        if match is None:
            problems.append(f"sentence {i + 1} matches no template: {s!r}")
            continue
        template, m = match
        slots = m.groupdict()
        if i == 0:
            if template not in INTRO:
                problems.append(f"sentence 1 should introduce the main character: {s!r}")
                continue
            main, gender = slots["Name"], NAMES[slots["Name"]]
        elif template in INTRO:
            problems.append(f"sentence {i + 1} introduces a second main character: {s!r}")
            continue
        if main is None:
            continue
        # a/an agrees with the next word
        for am in re.finditer(r"\b(a|an) (\w+)", s):
            if am.group(1) != _article(am.group(2)):
                problems.append(f"sentence {i + 1}: {am.group(0)!r} should be "
                                f"{_article(am.group(2)) + ' ' + am.group(2)!r}")
        # gendered words agree with the main character (her is both possessive and object)
        for slot in ("Pron", "pron", "Poss", "poss", "obj", "kind"):
            if slots.get(slot) and slots[slot] != PRONOUNS[slot][gender]:
                problems.append(f"sentence {i + 1}: {slots[slot]!r} does not agree with {main} ({gender})")
        # who may be named where
        if slots.get("Name") and slots["Name"] != main:
            problems.append(f"sentence {i + 1}: {slots['Name']!r} is not the main character {main}")
        if slots.get("Name2"):
            if slots["Name2"] == main:
                problems.append(f"sentence {i + 1}: {main} cannot be {main}'s own friend")
            elif friend not in (None, slots["Name2"]):
                problems.append(f"sentence {i + 1}: the friend was {friend}, now {slots['Name2']}")
            friend = friend or slots["Name2"]
        if slots.get("Speaker") and slots["Speaker"] not in (main, friend):
            problems.append(f"sentence {i + 1}: {slots['Speaker']!r} speaks but was never introduced")
        # the THING needs an earlier a/an THING
        if slots.get("the_thing") and slots["the_thing"] not in things:
            problems.append(f"sentence {i + 1}: 'the {slots['the_thing']}' was never introduced")
        if slots.get("thing"):
            things.append(slots["thing"])
    return problems


@dataclass
class GrammarReport:
    sentences: int  # complete sentences checked
    grammatical: int  # sentences with no problem
    problems: list

    @property
    def fraction(self) -> float:
        return self.grammatical / self.sentences if self.sentences else 0.0

    def __str__(self):
        return f"{self.grammatical}/{self.sentences} sentences grammatical ({100 * self.fraction:.0f}%)"


def grammar_report(text: str) -> GrammarReport:
    """Score generated text: each line is a story; a line's unfinished last sentence is ignored.

    A sentence counts as grammatical when `check_story` finds nothing wrong with it in its story.
    A first line that starts mid-story (a sample continued from a prompt) is checked from its
    first complete intro on.
    """
    total = good = 0
    problems = []
    for line in text.split("\n"):
        line = line.strip()
        start = min((line.find(p) for p in ("Once upon", *(f"{n} was a" for n in NAMES)) if p in line), default=-1)
        if start < 0:
            continue
        line = line[start:]
        sentences = split_sentences(line)
        if sentences and not sentences[-1].endswith("."):
            sentences = sentences[:-1]  # cut off by max_new_tokens
        if not sentences:
            continue
        bad = set()
        for p in check_story(" ".join(sentences)):
            problems.append(p)
            m = re.match(r"sentence (\d+)", p)
            bad.add(int(m.group(1)) if m else 0)
        total += len(sentences)
        good += len(sentences) - len(bad - {0})
    return GrammarReport(total, good, problems)


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------
def grammar_alphabet() -> str:
    """Every character the grammar can emit (plus the newline between stories), sorted.

    The vocabulary comes from the grammar, not from one sampled corpus, so every seed and every
    split gives the same token ids.
    """
    text = "\n" + " ".join(TEMPLATES) + " ".join(NAMES) + " ".join(" ".join(w) for w in WORDS.values())
    text += " ".join(w for table in PRONOUNS.values() for w in table.values()) + " a an"
    return "".join(sorted(set(_SLOT.sub("", text))))


class CharTokenizer:
    """One token per character: `encode("Tom") -> [ids]`, `decode(ids) -> "Tom"`.

    vocab: the characters, in id order (id i is vocab[i]).
    """

    def __init__(self, chars):
        chars = list(chars)
        if len(set(chars)) != len(chars) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise TokenizerError("CharTokenizer needs distinct single characters")
        self.vocab = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def __len__(self):
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError:
            i = next(i for i, c in enumerate(text) if c not in self.stoi)
            raise TokenizerError(f"character {text[i]!r} at position {i} is not in the vocabulary of "
                                 f"{self.vocab_size} characters {''.join(self.vocab)!r}") from None

    def decode(self, ids) -> str:
        ids = checks.token_ids(ids, self.vocab_size, "ids").reshape(-1)  # the one vocabulary check
        return "".join(self.vocab[i] for i in ids.tolist())

    def stream_decoder(self) -> "_CharStream":
        """For the generation loop: feed one id at a time, get its text (one character per id)."""
        return _CharStream(self)

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size}, vocab={''.join(self.vocab)!r})"


class _CharStream:
    def __init__(self, tok: CharTokenizer):
        self.tok = tok

    def feed(self, token_id: int) -> str:
        return self.tok.decode([token_id])

    def flush(self) -> str:
        return ""


# --------------------------------------------------------------------------------------------
# The data set: split, batches, baseline
# --------------------------------------------------------------------------------------------
class StoryDataset:
    """`n_stories` stories (seeded), tokenized and split by story into train and validation.

    train, val: int64 arrays of token ids, the stories joined by "\\n" (the newline is a token,
    so a model learns where a story ends).
    """

    def __init__(self, n_stories: int = 4000, seed: int = 0, val_fraction: float = 0.1):
        if n_stories < 2 or not 0.0 < val_fraction < 1.0:
            raise ConfigError(f"need n_stories >= 2 and 0 < val_fraction < 1, got {n_stories}, {val_fraction}")
        self.n_stories, self.seed, self.val_fraction = n_stories, seed, val_fraction
        self.tokenizer = CharTokenizer(grammar_alphabet())
        stories = generate_stories(n_stories, seed)
        n_val = max(1, int(round(n_stories * val_fraction)))
        self.train_text = "\n".join(stories[:-n_val]) + "\n"
        self.val_text = "\n".join(stories[-n_val:]) + "\n"
        self.train = np.array(self.tokenizer.encode(self.train_text), dtype=np.int64)
        self.val = np.array(self.tokenizer.encode(self.val_text), dtype=np.int64)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    # lesson 17: begin (batches)
    def get_batch(self, split: str, batch_size: int, block_size: int, generator=None):
        """Random windows of the split: x [B, T] and y [B, T] int64, y = x shifted left by one.

        Position t of row b asks the model for y[b, t] = the character after x[b, :t + 1]:
        one window gives T training examples at once (that is what the causal mask buys).
        """
        data = self._split(split)
        if len(data) <= block_size:
            raise ShapeError(f"the {split} split has {len(data)} tokens, too few for block_size={block_size}")
        rng = generator if isinstance(generator, np.random.Generator) else _gen(generator)  # litetorch or NumPy
        starts = rng.integers(0, len(data) - block_size, size=batch_size)  # [B]: where each window starts
        offsets = starts[:, None] + np.arange(block_size)  # [B, 1] + [T] -> [B, T]
        return data[offsets], data[offsets + 1]  # x [B, T], y [B, T]
    # lesson 17: end (batches)

    def _split(self, split: str) -> np.ndarray:
        if split not in ("train", "val"):
            raise ConfigError(f"split must be 'train' or 'val', got {split!r}")
        return self.train if split == "train" else self.val

    def unigram_baseline(self, split: str = "val") -> float:
        """Cross-entropy (nats/char) of the best model that ignores context: the unigram entropy."""
        return unigram_entropy(self._split(split), self.vocab_size)

    def __repr__(self):
        return (f"StoryDataset(n_stories={self.n_stories}, seed={self.seed}, train={len(self.train):,} chars, "
                f"val={len(self.val):,} chars, vocab={self.vocab_size})")


def unigram_entropy(ids, vocab_size: int | None = None) -> float:
    """H(p) = -sum_c p(c) ln p(c) over the character frequencies of `ids`, in nats.

    It is the cross-entropy of predicting each character from its frequency alone, the loss to
    beat: a model below it has learned something about context.
    """
    ids = np.asarray(ids).reshape(-1)
    counts = np.bincount(ids, minlength=vocab_size or 0).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


__all__ = ["CharTokenizer", "StoryDataset", "generate_story", "generate_stories", "grammar_entropy", "check_story",
           "grammar_report", "GrammarReport", "unigram_entropy", "grammar_alphabet", "split_sentences"]
