import torch

from quadra_pipeline.model.features import text_features


def test_counts_of_distinct_tokens_sorted_by_code_point():
    vec = text_features("b a B a , a", 6)
    # sorted by code point: ",", "B", "a", "b"
    assert vec.tolist() == [1.0, 1.0, 3.0, 1.0, 0.0, 0.0]


def test_keeps_first_n_tokens_and_case_and_punctuation():
    vec = text_features("z y x w Word word. word", 3)
    # sorted: "Word", "w", "word" ... first 3 kept
    assert vec.tolist() == [1.0, 1.0, 1.0]
    assert text_features("", 4).tolist() == [0.0] * 4
    assert text_features("   \n ", 4).dtype == torch.float32
