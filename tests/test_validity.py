"""Measurement validity: position-prior debiasing, position bias, norm and rogue-dimension
diagnostics, Spearman-Brown planning; numerics against hand values on small inputs."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import scored

# ---------------------------------------------------------------- PriDe debiasing

def test_debias_recovers_content_under_a_known_prior():
    rng = np.random.default_rng(0)
    s, n = 8, 4000
    prior = np.array([0.4, 0.25, 0.1, 0.08, 0.06, 0.05, 0.04, 0.02])
    content = rng.dirichlet(np.ones(s), size=n)  # the semantic preference, candidates at random positions
    observed = content * prior
    observed /= observed.sum(axis=1, keepdims=True)
    lengths = np.full(n, s)
    logp = np.log(observed).ravel() - 3.0  # unnormalized log-probabilities: an offset changes nothing
    exact = scored.debias(lengths, logp, {s: prior})
    assert np.allclose(exact.reshape(n, s), content, atol=1e-12)
    est = scored.PositionPrior()
    est.add(lengths[: n // 2], logp[: n // 2 * s])
    est.add(lengths[n // 2:], logp[n // 2 * s:])
    got = est.result()[s]
    assert got.sum() == pytest.approx(1.0)
    assert np.allclose(got, prior, rtol=0.08)
    debiased = scored.debias(lengths, logp, est.result()).reshape(n, s)
    assert observed.mean(axis=0)[0] > 0.3
    assert np.abs(debiased.mean(axis=0) - 1 / s).max() < 0.01
    assert np.abs(debiased - content).mean() < 0.01


def test_position_prior_per_length_by_hand():
    est = scored.PositionPrior()
    est.add(np.array([2, 3, 2]), np.log(np.array([0.8, 0.2, 0.5, 0.25, 0.25, 0.6, 0.4])))
    prior = est.result()
    two = np.exp([(np.log(0.8) + np.log(0.6)) / 2, (np.log(0.2) + np.log(0.4)) / 2])
    assert prior[2] == pytest.approx(two / two.sum())
    assert prior[3] == pytest.approx([0.5, 0.25, 0.25])
    out = scored.debias(np.array([2]), np.log([0.8, 0.2]), {2: np.array([0.8, 0.2])})
    assert out == pytest.approx([0.5, 0.5])
