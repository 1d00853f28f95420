"""litetorch.data: training data the project generates itself (lesson 17).

    from litetorch.data import StoryDataset
    data = StoryDataset(n_stories=4000, seed=0)
    x, y = data.get_batch("train", batch_size=32, block_size=64, generator=lt.Generator(0))
"""
from .stories import (CharTokenizer, GrammarReport, StoryDataset, check_story, generate_stories, generate_story,
                      grammar_alphabet, grammar_entropy, grammar_report, split_sentences, unigram_entropy)

__all__ = ["CharTokenizer", "StoryDataset", "GrammarReport", "check_story", "generate_stories", "generate_story",
           "grammar_alphabet", "grammar_entropy", "grammar_report", "split_sentences", "unigram_entropy"]
