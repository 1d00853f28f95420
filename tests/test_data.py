"""The generated story corpus, its grammar checker, the character tokenizer and the batch sampler.

Claims:
- The corpus is a pure function of the seed (the same stories on every run; a pinned first story).
- Every generated story passes the grammar checker, and the checker catches each kind of error.
- The tokenizer round-trips the corpus, is the same for every seed, and names bad input.
- Batches are int64 [B, T] windows with y = x shifted by one, reproducible from the generator.
- The unigram baseline is the entropy of the validation set's character frequencies.
"""
import collections
import math

import numpy as np
import pytest

import litetorch as lt
from litetorch.data import (CharTokenizer, StoryDataset, check_story, generate_stories, grammar_alphabet,
                            grammar_report, unigram_entropy)
from litetorch.errors import ShapeError, TokenizerError


@pytest.fixture(scope="module")
def data():
    return StoryDataset(n_stories=300, seed=0)


def test_same_seed_same_stories_other_seed_other_stories():
    assert generate_stories(50, seed=7) == generate_stories(50, seed=7)
    assert generate_stories(50, seed=7) != generate_stories(50, seed=8)
    # A prefix of a longer corpus is the shorter corpus (stories are drawn one after another).
    assert generate_stories(80, seed=7)[:50] == generate_stories(50, seed=7)


def test_first_story_of_seed_0_is_pinned():
    # Pins the corpus across machines and NumPy versions; a deliberate grammar change updates it.
    assert generate_stories(1, seed=0)[0] == (
        "Once upon a time, there was a little girl named Mia. One day, Mia went to the market. "
        "Mia and Sue sang in the zoo. They were happy. Her mom gave her a flower. She found an orange under "
        "a tree. They were scared. Mia was happy and smiled. The end.")


def test_every_generated_story_is_grammatical():
    stories = generate_stories(1000, seed=3)
    bad = [(s, p) for s in stories if (p := check_story(s))]
    assert not bad, bad[:3]
    assert grammar_report("\n".join(stories[:50])).fraction == 1.0


@pytest.mark.parametrize("story, expected", [
    ("Once upon a time, there was a eager boy named Tom.", "'a eager' should be 'an eager'"),
    ("Once upon a time, there was a kind girl named Tom.", "'girl' does not agree with Tom (he)"),
    ("Tom was a kind boy who lived near the park. One day, she went to the lake with her dad.",
     "'she' does not agree with Tom (he)"),
    ("Tom was a kind boy who lived near the park. They was happy.", "matches no template"),
    ("Tom was a kind boy who lived near the park. He gave the kite to his mom.", "'the kite' was never introduced"),
    ("Tom was a kind boy who lived near the park. He saw a red kite. \"I like the kite,\" said Mia.",
     "'Mia' speaks but was never introduced"),
    ("He saw a red kite.", "sentence 1 should introduce the main character"),
])
def test_checker_catches_each_kind_of_error(story, expected):
    problems = check_story(story)
    assert any(expected in p for p in problems), problems


def test_grammar_report_ignores_an_unfinished_last_sentence():
    text = "Tom was a kind boy who lived near the park. He saw a red kite. He gave the ki"
    report = grammar_report(text)
    assert (report.sentences, report.grammatical) == (2, 2)
    assert grammar_report(text.replace("He saw", "She saw")).grammatical == 1


def test_tokenizer_round_trips_and_is_the_same_for_every_seed(data):
    tok = data.tokenizer
    assert tok.decode(data.train) == data.train_text and tok.decode(data.val) == data.val_text
    assert StoryDataset(n_stories=20, seed=99).tokenizer.vocab == tok.vocab == list(grammar_alphabet())
    assert tok.encode("Tom") == [tok.vocab.index(c) for c in "Tom"]


def test_tokenizer_errors_name_the_bad_value():
    tok = CharTokenizer("abc")
    with pytest.raises(TokenizerError, match=r"character 'z' at position 2 .* 3 characters"):
        tok.encode("abz")
    with pytest.raises(TokenizerError, match=r"token id 3 in ids is out of range for a vocabulary of 3 tokens \(valid: 0..2\)"):
        tok.decode([0, 3])
    with pytest.raises(TokenizerError):
        CharTokenizer("aa")


def test_split_is_by_story_and_covers_the_corpus(data):
    stories = generate_stories(300, seed=0)
    assert data.train_text + data.val_text == "\n".join(stories[:270]) + "\n" + "\n".join(stories[270:]) + "\n"


def test_batches_are_shifted_windows_reproducible_from_the_generator(data):
    x, y = data.get_batch("train", 5, 16, lt.Generator(4))
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == np.int64
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # y is x moved left by one
    x2, y2 = data.get_batch("train", 5, 16, lt.Generator(4))
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    for row_x, row_y in zip(x, y):  # every row is a real window of the text
        s = data.tokenizer.decode(np.append(row_x, row_y[-1]))
        assert s in data.train_text
    xv, _ = data.get_batch("val", 3, 8, np.random.default_rng(0))  # a NumPy generator works too
    assert data.tokenizer.decode(xv[0]) in data.val_text
    with pytest.raises(ShapeError, match="too few for block_size"):
        data.get_batch("val", 1, len(data.val) + 5)
    with pytest.raises(ValueError, match="split must be"):
        data.get_batch("test", 1, 8)


def test_unigram_baseline_is_the_entropy_of_val_character_frequencies(data):
    counts = collections.Counter(data.val_text)
    n = sum(counts.values())
    expected = -sum(c / n * math.log(c / n) for c in counts.values())
    assert data.unigram_baseline() == pytest.approx(expected, rel=1e-12)
    assert 0 < data.unigram_baseline() < math.log(data.vocab_size)
    assert unigram_entropy(np.arange(8)) == pytest.approx(math.log(8))  # uniform: ln V
    assert unigram_entropy([3, 3, 3]) == 0.0
