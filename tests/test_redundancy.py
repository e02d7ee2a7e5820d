"""Unit tests for mmdet_ela.redundancy: adjacent KL, the accumulator, EBQM
and the random control."""
import json
import math

import numpy as np
import pytest
import torch

from mmdet_ela.redundancy import (EBQMResult, RedundancyAccumulator,
                                  UnitDecision, adjacent_kl, ebqm_select,
                                  fit_beta, random_select, smithson_verkuilen)


def _rand_attn(gen, n, g, s):
    return torch.softmax(torch.randn(n, g, s, generator=gen) * 2, dim=-1)


def _np_kl(prev, attn):
    """Direct numpy KL(P_a || A_b) with zero padding; returns [N, G]."""
    prev = prev.numpy().astype(np.float64)
    attn = attn.numpy().astype(np.float64)
    n, g, s_a = prev.shape
    out = np.zeros((n, g))
    for a in range(n):
        for b in range(g):
            for s in range(s_a):  # padded slots have P = 0 and contribute 0
                p = prev[a, b, s]
                if p > 0:
                    out[a, b] += p * math.log(p / attn[a, b, s])
    return out


# ----------------------------------------------------------------- KL -------
@pytest.mark.parametrize('s_a,s_b', [(1, 2), (3, 4), (4, 4), (2, 5)])
def test_adjacent_kl_matches_numpy(s_a, s_b):
    gen = torch.Generator().manual_seed(s_a * 10 + s_b)
    prev = _rand_attn(gen, 3, 4, s_a)
    attn = _rand_attn(gen, 3, 4, s_b)
    kl = adjacent_kl(prev, attn)
    assert kl.shape == (3, 4)
    assert kl.dtype == torch.float64
    np.testing.assert_allclose(
        kl.numpy(), _np_kl(prev, attn), rtol=1e-10, atol=1e-12)
    assert torch.all(kl >= -1e-12)


def test_adjacent_kl_zero_entries_and_identity():
    # identical distributions over the shared slots, b puts ~0 on its own slot
    prev = torch.tensor([[[0.5, 0.5, 0.0]]])
    attn = torch.tensor([[[0.5, 0.5, 0.0, 0.0]]])
    kl = adjacent_kl(prev, attn)
    assert torch.isfinite(kl).all()
    assert kl.item() == pytest.approx(0.0, abs=1e-15)
    # padding matters: b moving mass to its own slot increases the KL
    attn2 = torch.tensor([[[0.25, 0.25, 0.0, 0.5]]])
    assert adjacent_kl(prev, attn2).item() == pytest.approx(
        math.log(2), rel=1e-12)


def test_adjacent_kl_float32_and_half_inputs_give_float64():
    gen = torch.Generator().manual_seed(0)
    prev = _rand_attn(gen, 2, 2, 2).half()
    attn = _rand_attn(gen, 2, 2, 3).float()
    kl = adjacent_kl(prev, attn)
    assert kl.dtype == torch.float64
    np.testing.assert_allclose(
        kl.numpy(), _np_kl(prev.double(), attn.double()), rtol=1e-10)


@pytest.mark.parametrize(
    'prev_shape,attn_shape',
    [
        ((2, 3, 2), (3, 3, 3)),  # N differs
        ((2, 3, 2), (2, 4, 3)),  # G differs
        ((2, 3, 4), (2, 3, 3)),  # S_b < S_a
        ((2, 3), (2, 3, 3)),  # not 3-D
    ])
def test_adjacent_kl_bad_shapes(prev_shape, attn_shape):
    with pytest.raises(ValueError, match='adjacent_kl'):
        adjacent_kl(torch.rand(prev_shape), torch.rand(attn_shape))


# --------------------------------------------------------- accumulator ------
def test_accumulator_batches_equal_one_big_batch():
    gen = torch.Generator().manual_seed(1)
    keys = [('backbone.layer1', 1), ('backbone.layer1', 2), ('neck', 1)]
    batches = []
    for bs in (2, 3, 1):
        batches.append({
            keys[0]: (_rand_attn(gen, bs, 4, 1), _rand_attn(gen, bs, 4, 2)),
            keys[1]: (_rand_attn(gen, bs, 4, 2), _rand_attn(gen, bs, 4, 3)),
            keys[2]: (_rand_attn(gen, bs, 2, 1), _rand_attn(gen, bs, 2, 2)),
        })
    acc = RedundancyAccumulator(keys)
    for b in batches:
        for k, (p, a) in b.items():
            acc.update(k, p, a)
    big = RedundancyAccumulator(keys)
    for k in keys:
        big.update(k, torch.cat([b[k][0] for b in batches]),
                   torch.cat([b[k][1] for b in batches]))
    assert acc.sums.dtype == torch.float64
    assert acc.counts.dtype == torch.float64
    torch.testing.assert_close(acc.sums, big.sums, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(acc.counts, big.counts)
    assert acc.counts.tolist() == [6 * 4, 6 * 4, 6 * 2]
    scores = acc.scores()
    assert list(scores) == keys
    for k in keys:
        full = adjacent_kl(
            torch.cat([b[k][0] for b in batches]),
            torch.cat([b[k][1] for b in batches]))
        assert scores[k] == pytest.approx(full.mean().item(), rel=1e-12)


def test_accumulator_inplace_reduce_reset_and_empty():
    acc = RedundancyAccumulator(['a', 'b'])
    gen = torch.Generator().manual_seed(2)
    acc.update('a', _rand_attn(gen, 2, 2, 1), _rand_attn(gen, 2, 2, 2))
    s = acc.scores()
    assert math.isfinite(s['a']) and math.isnan(s['b'])
    # simulate an all-reduce SUM over 2 identical ranks, in place
    before = acc.scores()['a']
    acc.sums.mul_(2)
    acc.counts.mul_(2)
    assert acc.scores()['a'] == pytest.approx(before)
    assert acc.counts[0].item() == 8
    acc.reset()
    assert acc.sums.abs().sum().item() == 0 and acc.counts.sum().item() == 0
    assert all(math.isnan(v) for v in acc.scores().values())
    assert acc.keys == ['a', 'b']


def test_accumulator_unknown_and_duplicate_keys():
    acc = RedundancyAccumulator([('s1', 1), ('s1', 2)])
    with pytest.raises(KeyError) as exc:
        acc.update(('s9', 1), torch.rand(1, 1, 1), torch.rand(1, 1, 2))
    msg = str(exc.value)
    assert "'s9'" in msg and "('s1', 1)" in msg and "('s1', 2)" in msg
    with pytest.raises(ValueError, match='duplicate'):
        RedundancyAccumulator(['a', 'a'])


# ------------------------------------------------------ beta helpers --------
def test_smithson_verkuilen_and_fit_beta():
    z = np.array([0.0, 0.5, 1.0])
    np.testing.assert_allclose(
        smithson_verkuilen(z), [0.5 / 3, 1.5 / 3, 2.5 / 3])
    assert smithson_verkuilen(np.array([]).reshape(0)).size == 0

    rng = np.random.default_rng(0)
    sample = rng.beta(2.0, 5.0, size=400)
    a, b, method = fit_beta(sample)
    assert method == 'mle'
    assert a == pytest.approx(
        2.0, rel=0.25) and b == pytest.approx(
            5.0, rel=0.25)
    assert fit_beta(np.array([0.2, 0.8])) == (1.0, 1.0, 'uniform')
    assert fit_beta(np.array([0.4, 0.4, 0.4])) == (1.0, 1.0, 'uniform')
    with pytest.raises(ValueError):
        fit_beta(np.array([0.1, np.nan, 0.5]))


def test_fit_beta_falls_back_to_moments(monkeypatch):
    from mmdet_ela.redundancy import ebqm as ebqm_mod

    def boom(*args, **kwargs):
        raise RuntimeError('optimiser failed')

    monkeypatch.setattr(ebqm_mod.stats.beta, 'fit', boom)
    z = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    a, b, method = fit_beta(z)
    assert method == 'moments'
    m, v = z.mean(), z.var()
    assert a / (a + b) == pytest.approx(m)
    assert a * b / ((a + b)**2 * (a + b + 1)) == pytest.approx(v)

    monkeypatch.setattr(ebqm_mod.stats.beta, 'fit', lambda *a, **k:
                        (float('nan'), 1.0, 0, 1))
    assert fit_beta(z)[2] == 'moments'
    # moments give negative parameters when the variance is too large
    assert fit_beta(np.array([0.0, 0.0, 1.0, 1.0]))[2] == 'uniform'


# --------------------------------------------------------------- EBQM -------
def _decision(res, g, i):
    d = [x for x in res.decisions if x.group == g and x.index == i]
    assert len(d) == 1
    return d[0]


def _assert_no_adjacent_pruned(mask):
    for g, m in mask.items():
        for i in range(1, len(m)):
            assert m[i -
                     1] or m[i], f'adjacent units {i - 1},{i} pruned in {g}'


def test_ebqm_picks_clearly_redundant_unit():
    scores = {'s': [None, 1.0, 1.2, 0.001, 0.9, 1.1, 1.05, 0.95]}
    mask = {'s': [True] * 8}
    res = ebqm_select(scores, mask, quantile=0.3, max_prune_ratio=0.5)
    assert isinstance(res, EBQMResult)
    assert res.mask['s'] == [True, True, True, False, True, True, True, True]
    d = _decision(res, 's', 3)
    assert d.candidate and d.redundant and d.pruned and d.reason == 'pruned'
    assert d.cdf is not None and d.cdf < 0.3
    assert _decision(res, 's', 0).reason == 'first unit'
    assert not _decision(res, 's', 0).candidate
    assert _decision(res, 's', 2).reason == 'above quantile'
    assert res.num_pruned == 1 and res.num_units == 8
    assert res.fit_method in ('mle', 'moments', 'uniform')
    assert len(res.decisions) == 8
    # input mask untouched
    assert mask['s'] == [True] * 8


def test_ebqm_no_adjacent_pruning_across_rounds():
    # low scores on many consecutive units: greedy must skip neighbours
    scores = {
        'a': [None, 0.01, 0.02, 0.03, 0.011, 5.0, 6.0, 7.0, 8.0, 9.0],
        'b': [None, 0.015, 0.012, 4.0, 5.5, 6.5]
    }
    mask = {'a': [True] * 10, 'b': [True] * 6}
    res = ebqm_select(scores, mask, quantile=0.6, max_prune_ratio=0.9)
    _assert_no_adjacent_pruned(res.mask)
    assert res.num_pruned >= 2
    reasons = {d.reason for d in res.decisions if d.redundant and not d.pruned}
    assert reasons & {'predecessor pruned', 'neighbour pruned'}
    # lowest p is 'a'[1] (0.01) -> pruned; then 'a'[4] (0.011), 'b'[2] (0.012)
    assert not res.mask['a'][1] and not res.mask['a'][4]
    assert not res.mask['b'][2]
    assert _decision(res, 'a', 2).reason == 'predecessor pruned'
    assert _decision(res, 'b', 1).reason == 'neighbour pruned'

    # round 2: neighbours of units pruned in round 1 are never candidates
    scores2 = {
        g: [None if not k else s for s, k in zip(scores[g], res.mask[g])]
        for g in scores
    }
    for g in scores2:  # the scorer re-scores everything; make them all low
        scores2[g] = [
            None if (i == 0 or not res.mask[g][i]) else 0.001 * (i + 1)
            for i in range(len(res.mask[g]))
        ]
        scores2[g][-1] = 10.0
    res2 = ebqm_select(scores2, res.mask, quantile=0.9, max_prune_ratio=0.9)
    _assert_no_adjacent_pruned(res2.mask)
    for g in res.mask:
        for i, kept in enumerate(res.mask[g]):
            if not kept:
                assert res2.mask[g][i] is False
                assert _decision(res2, g, i).reason == 'already pruned'
    assert _decision(res2, 'a', 2).reason == 'predecessor pruned'
    assert _decision(res2, 'a', 3).reason == 'neighbour pruned'
    assert not _decision(res2, 'a', 3).candidate
    assert res2.num_pruned > res.num_pruned


def test_ebqm_min_keep():
    scores = {'s': [None, 0.01, 5.0, 0.02, 6.0], 't': [None, 4.0, 4.5]}
    mask = {'s': [True] * 5, 't': [True] * 3}
    res = ebqm_select(
        scores, mask, quantile=0.5, max_prune_ratio=0.9, min_keep=4)
    assert sum(res.mask['s']) == 4 and sum(res.mask['t']) == 3
    assert res.num_pruned == 1
    assert not res.mask['s'][1]
    assert _decision(res, 's', 3).reason == 'min_keep'
    # min_keep larger than the group size: nothing pruned, no crash
    res = ebqm_select(
        scores, mask, quantile=0.5, max_prune_ratio=0.9, min_keep=10)
    assert res.num_pruned == 0
    assert all(all(m) for m in res.mask.values())


def test_ebqm_max_prune_ratio_counts_earlier_rounds():
    scores = {'s': [None, 0.01, 5.0, 0.02, 6.0, 0.03, 7.0, 8.0, 9.0, 10.0]}
    mask = {'s': [True] * 10}
    res = ebqm_select(scores, mask, quantile=0.5, max_prune_ratio=0.2)
    assert res.num_pruned == 2  # floor(0.2 * 10)
    assert res.mask['s'].count(False) == 2
    assert _decision(res, 's', 5).reason == 'max_prune_ratio'
    assert not res.mask['s'][1] and not res.mask['s'][3]
    # with 2 already pruned, a second round at the same ratio prunes nothing
    scores2 = {'s': [None, None, 0.01, None, 0.02, 0.03, 7.0, 8.0, 9.0, 10.0]}
    res2 = ebqm_select(scores2, res.mask, quantile=0.9, max_prune_ratio=0.2)
    assert res2.num_pruned == 2 and res2.mask == res.mask
    assert any(d.reason == 'max_prune_ratio' for d in res2.decisions)
    # ratio 0 prunes nothing
    res0 = ebqm_select(scores, mask, quantile=0.5, max_prune_ratio=0.0)
    assert res0.num_pruned == 0


@pytest.mark.parametrize('kwargs,key', [
    (dict(quantile=0.0), 'quantile'),
    (dict(quantile=1.0), 'quantile'),
    (dict(quantile=-0.1), 'quantile'),
    (dict(quantile=float('nan')), 'quantile'),
    (dict(quantile='0.3'), 'quantile'),
    (dict(max_prune_ratio=1.0), 'max_prune_ratio'),
    (dict(max_prune_ratio=-0.01), 'max_prune_ratio'),
    (dict(max_prune_ratio=float('nan')), 'max_prune_ratio'),
    (dict(min_keep=0), 'min_keep'),
    (dict(min_keep=1.0), 'min_keep'),
    (dict(min_keep=True), 'min_keep'),
])
def test_ebqm_bad_args(kwargs, key):
    scores = {'s': [None, 1.0, 2.0]}
    mask = {'s': [True] * 3}
    with pytest.raises(ValueError, match=key):
        ebqm_select(scores, mask, **kwargs)


def test_ebqm_mismatched_inputs():
    with pytest.raises(ValueError, match='expected 3'):
        ebqm_select({'s': [None, 1.0]}, {'s': [True] * 3})
    with pytest.raises(ValueError, match='same groups'):
        ebqm_select({'s': [None, 1.0, 2.0]}, {'t': [True] * 3})
    with pytest.raises(ValueError, match='same groups'):
        ebqm_select({'s': [None]}, {'s': [True], 't': [True]})


def _check_sane(res, mask):
    assert isinstance(res, EBQMResult)
    json.dumps(res.to_dict(), allow_nan=False)
    for g, m in res.mask.items():
        assert len(m) == len(mask[g])
        if any(mask[g]):
            assert any(m), f'group {g} lost every unit'
    _assert_no_adjacent_pruned(res.mask)
    assert all(isinstance(d, UnitDecision) for d in res.decisions)


def test_ebqm_all_equal_scores():
    mask = {'s': [True] * 6, 't': [True] * 4}
    scores = {'s': [None] + [0.5] * 5, 't': [None] + [0.5] * 3}
    res = ebqm_select(scores, mask, quantile=0.99, max_prune_ratio=0.9)
    _check_sane(res, mask)
    assert res.num_pruned == 0
    cands = [d for d in res.decisions if d.candidate]
    assert len(cands) == 8
    assert all(d.reason == 'no spread in scores' and not d.redundant
               for d in cands)
    assert res.fit_method == 'none'


def test_ebqm_few_candidates():
    # two candidates with spread: uniform fit, p = 0.25 / 0.75
    mask = {'s': [True] * 3}
    res = ebqm_select({'s': [None, 0.1, 0.9]},
                      mask,
                      quantile=0.3,
                      max_prune_ratio=0.5)
    _check_sane(res, mask)
    assert res.fit_method == 'uniform'
    assert _decision(res, 's', 1).cdf == pytest.approx(0.25)
    assert _decision(res, 's', 2).cdf == pytest.approx(0.75)
    assert res.mask['s'] == [True, False, True]
    # a single candidate: no spread, nothing pruned
    res = ebqm_select({'s': [None, 0.1]}, {'s': [True, True]},
                      quantile=0.9,
                      max_prune_ratio=0.9)
    _check_sane(res, {'s': [True, True]})
    assert res.num_pruned == 0
    assert _decision(res, 's', 1).reason == 'no spread in scores'


def test_ebqm_nan_and_inf_scores():
    mask = {'s': [True] * 8}
    scores = {
        's': [
            None,
            float('nan'), 1.0,
            float('inf'), 2.0, 0.001,
            float('-inf'), 3.0
        ]
    }
    res = ebqm_select(scores, mask, quantile=0.3, max_prune_ratio=0.9)
    _check_sane(res, mask)
    for i in (1, 3, 6):
        d = _decision(res, 's', i)
        assert d.reason == 'invalid score' and not d.candidate and not d.pruned
    assert math.isfinite(res.alpha) and math.isfinite(res.beta)
    assert not res.mask['s'][5]  # the clear low one is still found
    out = res.to_dict()
    assert out['decisions'][1]['score'] is None
    assert out['decisions'][3]['score'] is None
    # all scores invalid: nothing to fit, nothing pruned
    res = ebqm_select({'s': [None, float('nan'), None,
                             float('inf')]}, {'s': [True] * 4})
    _check_sane(res, {'s': [True] * 4})
    assert res.num_pruned == 0 and res.fit_method == 'none'
    assert res.to_dict()['alpha'] is None


def test_ebqm_single_unit_groups_and_empty():
    mask = {'a': [True], 'b': [True], 'c': []}
    res = ebqm_select({'a': [None], 'b': [0.3], 'c': []}, mask)
    _check_sane(res, mask)
    assert res.num_pruned == 0 and res.num_units == 2
    assert [d.reason for d in res.decisions] == ['first unit', 'first unit']
    assert res.mask == {'a': [True], 'b': [True], 'c': []}
    res = ebqm_select({}, {})
    assert res.decisions == [] and res.num_units == 0 and res.mask == {}
    # a group whose first units were pruned earlier: the first kept one leads
    mask = {'s': [True, False, True, True, True]}
    res = ebqm_select({'s': [None, None, 9.0, 0.0, 1.0]},
                      mask,
                      quantile=0.9,
                      max_prune_ratio=0.9)
    _check_sane(res, mask)
    assert _decision(res, 's', 0).reason == 'first unit'
    assert _decision(res, 's', 1).reason == 'already pruned'
    assert _decision(res, 's', 2).reason == 'predecessor pruned'
    assert res.mask['s'] == [True, False, True, False, True]
    assert _decision(res, 's', 4).reason == 'predecessor pruned'
    # leading units absent: the first kept unit is never a candidate
    mask = {'s': [False, True, True, True]}
    res = ebqm_select({'s': [None, 0.0, 0.5, 1.0]},
                      mask,
                      quantile=0.9,
                      max_prune_ratio=0.9)
    _check_sane(res, mask)
    assert _decision(res, 's', 1).reason == 'first unit'
    assert _decision(res, 's', 1).score == 0.0
    assert res.mask['s'][1]


def test_ebqm_deterministic_and_tie_break():
    # identical scores in two groups and within a group; the budget allows one
    scores = {'b': [None, 0.0, 5.0, 0.0, 6.0], 'a': [None, 0.0, 7.0, 8.0, 9.0]}
    mask = {'b': [True] * 5, 'a': [True] * 5}
    r1 = ebqm_select(scores, mask, quantile=0.4, max_prune_ratio=0.1)
    r2 = ebqm_select(scores, mask, quantile=0.4, max_prune_ratio=0.1)
    assert r1.to_dict() == r2.to_dict()
    assert r1.num_pruned == 1
    # group order (dict order: 'b' first) beats the name, then index
    assert r1.mask['b'] == [True, False, True, True, True]
    assert all(r1.mask['a'])
    # reversed group order -> 'a' wins the tie
    rev = ebqm_select({
        'a': scores['a'],
        'b': scores['b']
    }, {
        'a': mask['a'],
        'b': mask['b']
    },
                      quantile=0.4,
                      max_prune_ratio=0.1)
    assert rev.mask['a'] == [True, False, True, True, True]
    assert all(rev.mask['b'])
    # budget of 2: second pick is b[3] (same p, same group, higher index)
    r3 = ebqm_select(scores, mask, quantile=0.4, max_prune_ratio=0.2)
    assert r3.mask['b'] == [True, False, True, False, True]
    assert all(r3.mask['a'])


def test_to_dict_json():
    res = ebqm_select({'s': [None, 0.1, 0.5, 0.9, 0.2]}, {'s': [True] * 5})
    d = res.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = json.loads(text)
    assert back['num_units'] == 5
    assert set(back['decisions'][0]) == {
        'group', 'index', 'score', 'cdf', 'candidate', 'redundant', 'pruned',
        'reason', 'scaled'
    }
    assert back['mask'] == {'s': res.mask['s']}


# --------------------------------------------- non-finite samples -------
def test_accumulator_skips_non_finite_samples():
    """A NaN or inf sample is left out whole and counted; the score is that
    of the finite samples (it was NaN for the whole key before)."""
    gen = torch.Generator().manual_seed(3)
    prev, attn = _rand_attn(gen, 4, 2, 2), _rand_attn(gen, 4, 2, 3)
    bad_attn = attn.clone()
    bad_attn[1, 0, 0] = float('nan')
    bad_prev = prev.clone()
    bad_prev[3, 1, 1] = float('inf')
    acc = RedundancyAccumulator(['k'])
    acc.update('k', bad_prev, bad_attn)
    finite = [0, 2]
    expected = adjacent_kl(prev[finite], attn[finite]).mean().item()
    assert acc.scores()['k'] == pytest.approx(expected, rel=1e-12)
    assert acc.skipped.tolist() == [2.0]
    assert acc.counts.tolist() == [2 * 2]
    # every sample non-finite: no score, all counted
    acc = RedundancyAccumulator(['k'])
    acc.update('k', prev, torch.full_like(attn, float('nan')))
    assert math.isnan(acc.scores()['k'])
    assert acc.skipped.tolist() == [4.0] and acc.counts.tolist() == [0.0]
    acc.reset()
    assert acc.skipped.tolist() == [0.0]


# -------------------------------------------------- scaled scores -------
def test_ebqm_keeps_scaled_scores():
    scores = {'s': [None, 0.1, 0.5, 0.9, 0.2], 't': [None, 0.3, 0.7]}
    mask = {'s': [True] * 5, 't': [True] * 3}
    res = ebqm_select(scores, mask)
    cands = [d for d in res.decisions if d.candidate]
    raw = np.array([d.score for d in cands])
    expected = smithson_verkuilen((raw - raw.min()) / np.ptp(raw))
    np.testing.assert_allclose([d.scaled for d in cands], expected)
    assert all(d.scaled is None for d in res.decisions if not d.candidate)
    # no spread: nothing was scaled
    res = ebqm_select({'s': [None, 0.4, 0.4]}, {'s': [True] * 3})
    assert all(d.scaled is None for d in res.decisions)


# -------------------------------------------------- random control ------
def test_random_select_safeguards_and_determinism():
    mask = {'a': [True] * 6, 'b': [True] * 4, 'c': [True]}
    res = random_select(
        mask, num_units=10, seed=0, min_keep=1, max_prune_ratio=0.9)
    assert res.fit_method == 'random'
    assert math.isnan(res.alpha) and math.isnan(res.beta)
    assert isinstance(res, EBQMResult)
    for g, m in res.mask.items():
        assert m[0], 'the first unit is never pruned'
        assert not any(not x and not y for x, y in zip(m, m[1:])), \
            f'{g}: two adjacent units pruned'
    # without two adjacent units: a loses 2 or 3, b 1 or 2, c nothing
    groups = [g for g, _ in res.newly_pruned]
    assert groups.count('a') in (2, 3) and groups.count('b') in (1, 2)
    assert res.to_dict() == random_select(mask, 10, 0, 1, 0.9).to_dict()
    draws = {
        tuple(map(tuple,
                  random_select(mask, 2, s, 1, 0.9).newly_pruned))
        for s in range(20)
    }
    assert len(draws) > 1, 'the seed changes the draw'
    # the number asked for, the budget and min_keep
    assert len(random_select(mask, 2, 1, 1, 0.9).newly_pruned) == 2
    assert len(random_select(mask, 9, 1, 1, 0.2).newly_pruned) == 2
    res = random_select({'a': [True] * 3},
                        5,
                        0,
                        min_keep=3,
                        max_prune_ratio=0.9)
    assert res.newly_pruned == []
    assert {d.reason for d in res.decisions} >= {'first unit', 'min_keep'}
    # earlier rounds count: predecessor and neighbour of pruned units stay
    res = random_select({'a': [True, False, True, True]}, 5, 0, 1, 0.9)
    assert res.mask['a'] == [True, False, True, False]
    assert res.decisions[2].reason == 'predecessor pruned'


def test_random_select_bad_args_and_scores():
    with pytest.raises(ValueError, match='num_units'):
        random_select({'a': [True] * 3}, -1, 0)
    with pytest.raises(ValueError, match='seed'):
        random_select({'a': [True] * 3}, 1, 1.5)
    with pytest.raises(ValueError, match='max_prune_ratio'):
        random_select({'a': [True] * 3}, 1, 0, max_prune_ratio=1.0)
    with pytest.raises(ValueError, match='min_keep'):
        random_select({'a': [True] * 3}, 1, 0, min_keep=0)
    res = random_select({'a': [True] * 3},
                        1,
                        0,
                        max_prune_ratio=0.5,
                        scores={'a': [None, 0.2, 0.3]})
    assert [d.score for d in res.decisions] == [None, 0.2, 0.3]
