import numpy as np
import pandas as pd
import pytest

from cortex_utils import concepts


def _slow_concepts(tokens, labels, tis, n, n_classes):
    out = {}
    for t, y, s in zip(tokens.reshape(len(tokens), -1), labels, tis.reshape(len(tis), -1), strict=True):
        for pos in np.argsort(-s, kind="stable")[:n]:
            out[(y, t[pos])] = out.get((y, t[pos]), 0) + 1
    return out


def test_concept_counts_match_a_plain_loop():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 12, (40, 4, 4))
    labels = np.arange(40) % 3
    tis = rng.random((40, 4, 4))
    table = concepts.concept_tokens(tokens, labels, tis, ["a", "b", "c"], 12, top_ns=(1, 5), top=100)
    for n in (1, 5):
        slow = _slow_concepts(tokens, labels, tis, n, 3)
        got = table[(table.top_n == n) & (table.label >= 0)]
        assert {(r.label, r.token): r.count for r in got.itertuples()} == slow
        glob = table[(table.top_n == n) & (table.label == -1)]
        assert glob["count"].sum() == 40 * n
    assert set(table.columns) >= {"top_n", "label", "class_name", "rank", "token", "count", "images", "share"}


def test_top_tokens_sit_at_the_top_positions_the_smaller_position_first_on_a_tie():
    tis = np.array([[[0.1, 0.9], [0.5, 0.9]]])
    tokens = np.array([[[10, 11], [12, 13]]])
    assert concepts.top_tokens(tokens, tis, 3).tolist() == [[11, 13, 12]]  # tis.topk_positions: 1, 3, then 2
    with pytest.raises(ValueError, match="top-n must be >= 1"):
        concepts.top_tokens(tokens, tis, 0)
    with pytest.raises(ValueError, match=r"k must lie in \[0, 4\]"):
        concepts.top_tokens(tokens, tis, 5)


def test_empty_class_is_refused():
    with pytest.raises(ValueError, match=r"no images: \['c'\]"):
        concepts.concept_tokens(np.zeros((2, 2, 2), int), [0, 1], np.zeros((2, 2, 2)), ["a", "b", "c"], 4)


def test_frequency_and_contrastive_baselines():
    tokens = np.array([[[0, 0], [1, 2]], [[0, 0], [0, 3]], [[3, 3], [3, 0]]])
    labels = np.array([0, 0, 1])
    freq = concepts.frequency_tokens(tokens, labels, ["a", "b"], 4, top=2)
    assert freq[freq.label == 0]["token"].tolist() == [0, 1]
    con = concepts.frequency_tokens(tokens, labels, ["a", "b"], 4, top=4, contrastive=True)
    # token 0 is frequent everywhere; 1 and 2 occur only in class a
    a = con[con.label == 0]["token"].tolist()
    assert a.index(1) < a.index(0) and a.index(2) < a.index(0) and 3 in a
    assert set(con[con.label == 1]["token"]) == {0, 3}


def test_token_sets_and_overlap():
    t = pd.DataFrame({"top_n": 5, "label": [0, 0, 0, 1], "rank": [1, 2, 3, 1], "token": [4, 5, 6, 7]})
    sets = concepts.token_sets(t, 2, top_n=5)
    assert sets[0].tolist() == [4, 5] and sets[1].tolist() == [7]
    assert concepts.overlap(sets, {0: np.array([5]), 1: np.array([1])}).tolist() == [0.5, 0.0]


def test_background_tokens_are_the_commonest_ids_across_classes():
    # class 0: id 0 fills 6 of 8 positions, ids 1, 2 one each; class 1: id 0 fills 2 of 8, id 3 six
    tokens = np.array([[[0, 0], [0, 1]], [[0, 0], [0, 2]], [[3, 3], [3, 0]], [[3, 3], [3, 0]]])
    labels = np.array([0, 0, 1, 1])
    # mean share over classes: id 0 (6/8 + 2/8) / 2 = 1/2, id 3 3/8, ids 1, 2 1/16 each
    assert concepts.background_tokens(tokens, labels, 4, share=0.5).tolist() == [0]
    assert concepts.background_tokens(tokens, labels, 4, share=0.6).tolist() == [0, 3]
    assert concepts.background_tokens(tokens, labels, 4, share=0.9).tolist() == [
        0,
        1,
        3,
    ]  # tie 1/2: smaller id
    assert concepts.background_tokens(tokens, labels, 4, share=0.0).tolist() == []
    # every class weighs the same: a third image of class 1 changes nothing about its shares
    more = np.concatenate([tokens, tokens[2:3]])
    assert concepts.background_tokens(more, np.r_[labels, 1], 4, share=0.5).tolist() == [0]
    with pytest.raises(ValueError, match=r"share must lie in \[0, 1\)"):
        concepts.background_tokens(tokens, labels, 4, share=1.0)
    with pytest.raises(ValueError, match="one label per token grid"):
        concepts.background_tokens(tokens, labels[:3], 4)


def test_frequency_baseline_without_the_background():
    tokens = np.array([[[0, 0], [0, 1]], [[0, 0], [0, 2]], [[3, 3], [3, 0]], [[3, 3], [3, 0]]])
    labels = np.array([0, 0, 1, 1])
    plain = concepts.frequency_tokens(tokens, labels, ["a", "b"], 4, top=3)
    assert plain[plain.label == 0]["token"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(
        concepts.frequency_tokens(tokens, labels, ["a", "b"], 4, top=3, exclude=[]), plain
    )
    background = concepts.background_tokens(tokens, labels, 4, share=0.5)
    fg = concepts.frequency_tokens(tokens, labels, ["a", "b"], 4, top=3, exclude=background)
    assert fg[fg.label == 0]["token"].tolist() == [1, 2] and fg[fg.label == 1]["token"].tolist() == [3]
    assert fg[fg.label == 1]["count"].tolist() == [6]  # the kept ids' counts are unchanged
    con = concepts.frequency_tokens(tokens, labels, ["a", "b"], 4, top=4, contrastive=True, exclude=[0, 1])
    assert con[con.label == 0]["token"].tolist() == [2] and con[con.label == 1]["token"].tolist() == [3]
    with pytest.raises(ValueError, match=r"excluded ids must lie in \[0, 4\)"):
        concepts.frequency_tokens(tokens, labels, ["a", "b"], 4, exclude=[4])


def test_position_counts_match_a_loop_and_arrange_tokens_places_the_most_frequent_id():
    rng = np.random.default_rng(1)
    tokens = rng.integers(0, 6, (30, 3, 4))
    counts = concepts.position_counts(tokens, 6)
    slow = np.zeros((3, 4, 6), int)
    for g in tokens:
        for y in range(3):
            for x in range(4):
                slow[y, x, g[y, x]] += 1
    assert np.array_equal(counts, slow)
    # a hand-made case: position (0, 0) mostly id 2, (0, 1) a tie of 1 and 2, (1, 1) neither 1 nor 2
    grids = np.array([[[2, 1], [0, 0]], [[2, 2], [0, 0]], [[1, 0], [0, 3]]])
    region = np.array([[True, True], [False, True]])
    c = concepts.position_counts(grids, 4)
    assert concepts.arrange_tokens(c, [1, 2], region).tolist() == [[2, 1], [-1, 1]]  # tie, all-zero: first id
    assert concepts.arrange_tokens(c, [2, 1], region).tolist() == [[2, 2], [-1, 2]]
    with pytest.raises(ValueError, match="empty token set"):
        concepts.arrange_tokens(c, [], region)
    with pytest.raises(ValueError, match=r"ids must lie in \[0, 4\)"):
        concepts.arrange_tokens(c, [4], region)
    with pytest.raises(ValueError, match="counts must be"):
        concepts.arrange_tokens(c, [1], np.ones((3, 3), bool))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 3\)"):
        concepts.position_counts(grids, 3)


def test_top_tis_share_measures_concentration():
    from cortex_utils.concepts import top_tis_share

    even = np.ones((1, 4, 4))
    peaked = np.zeros((1, 4, 4))
    peaked[0, 1, 2], peaked[0, 3, 3] = 3.0, 1.0
    signed = np.array([[[2.0, -2.0], [1.0, 0.0]]])  # top-1 by value: 2.0 of a |TIS| mass of 5
    np.testing.assert_allclose(top_tis_share(even, 4), [0.25])
    np.testing.assert_allclose(top_tis_share(peaked, 1), [0.75])
    np.testing.assert_allclose(top_tis_share(peaked, 2), [1.0])
    np.testing.assert_allclose(top_tis_share(signed, 1), [0.4])
    with pytest.raises(ValueError, match=r"k must lie in \[0, 16\]"):
        top_tis_share(even, 17)
