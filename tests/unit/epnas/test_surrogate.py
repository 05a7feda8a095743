"""The Bayesian linear surrogate against closed-form cases."""

from __future__ import annotations

import math

import pytest
import torch

from epnas import surrogate


def test_features_by_hand() -> None:
    assert surrogate.features(1000, 1e6, 3, 10) == [1.0, 3.0, 6.0, 3.0, 1.0]
    assert surrogate.features(0, 0, 1, 0.5) == [1.0, 0.0, 0.0, 1.0, 0.0]  # logs of values below 1 read 0


def test_no_data_is_the_prior() -> None:
    posterior = surrogate.fit([], [])
    assert posterior.mean.tolist() == list(surrogate.PRIOR_MEAN)
    assert torch.allclose(posterior.cov.diagonal(), torch.tensor(surrogate.PRIOR_STD, dtype=torch.float64) ** 2)
    # the prior ranks by FLOPs alone: +0.1 per decade
    more, fewer = surrogate.features(1e4, 1e6, 3, 5), surrogate.features(1e4, 1e5, 3, 5)
    assert (posterior.predict([more, fewer]) @ torch.tensor([1.0, -1.0], dtype=torch.float64)).item() == pytest.approx(
        0.1
    )


def test_one_observation_matches_the_closed_form() -> None:
    # one point: m = w0 + S0 φ (y − φ·w0) / (σ_n² + φᵀ S0 φ)   (the rank-one update)
    phi = surrogate.features(5000, 2e5, 2, 4)
    y = 0.9
    s0 = torch.diag(torch.tensor(surrogate.PRIOR_STD, dtype=torch.float64) ** 2)
    w0 = torch.tensor(surrogate.PRIOR_MEAN, dtype=torch.float64)
    x = torch.tensor(phi, dtype=torch.float64)
    gain = s0 @ x / (surrogate.NOISE_STD**2 + x @ s0 @ x)
    expected = w0 + gain * (y - x @ w0)
    posterior = surrogate.fit([phi], [y])
    assert torch.allclose(posterior.mean, expected, atol=1e-12)


def test_evidence_overrides_the_prior() -> None:
    # twenty children where accuracy FALLS with FLOPs: the posterior must learn the sign
    phi = [surrogate.features(1e4, 10 ** (4 + k / 10), 3, 5) for k in range(20)]
    acc = [0.95 - 0.2 * k / 10 for k in range(20)]
    posterior = surrogate.fit(phi, acc)
    assert posterior.mean[2].item() < 0
    low, high = posterior.predict([phi[0], phi[-1]]).tolist()
    assert low > high


def test_draws_are_deterministic_and_spread_around_the_mean() -> None:
    posterior = surrogate.fit([surrogate.features(1e4, 1e5, 3, 5)], [0.8])
    a = posterior.draw(torch.Generator().manual_seed(1))
    b = posterior.draw(torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    draws = torch.stack([posterior.draw(torch.Generator().manual_seed(s)) for s in range(2000)])
    assert torch.allclose(
        draws.mean(0), posterior.mean, atol=4 * math.sqrt(posterior.cov.diagonal().max().item() / 2000)
    )


# ---------------------------------------------------------------- choice features

from epnas.arch import parse_arch  # noqa: E402
from epnas.space import get_space  # noqa: E402

KWS = parse_arch(
    {
        "space": "kws-layer",
        "layers": [
            {
                "op": "conv2d",
                "src1": 0,
                "channels": 16,
                "width": 8,
                "freq_width": 2,
                "stride_time": 10,
                "stride_freq": 1,
                "activation": "relu",
            },
            {"op": "gru", "src1": 1, "channels": 16, "directions": 1},
            {"op": "fc", "src1": 2, "src2": 1, "merge": "concat", "channels": 12, "activation": "relu"},
        ],
    }
)


def test_choices_by_hand() -> None:
    assert surrogate.choices(KWS) == [
        "op:conv2d",
        "channels:16",
        "width:8",
        "freq_width:2",
        "stride_time:10",
        "stride_freq:1",
        "activation:relu",
        "op:gru",
        "channels:16",
        "directions:1",
        "op:fc",
        "channels:12",
        "activation:relu",
        "skip",
    ]


def test_every_choice_of_every_space_is_in_its_vocabulary() -> None:
    import random

    from epnas.arch import random_arch

    for name in ("image-layer", "image-module", "kws-layer"):
        keys = set(surrogate.vocabulary(get_space(name)))
        for seed in range(30):
            arch = random_arch(name, 4, random.Random(seed))
            assert set(surrogate.choices(arch)) <= keys, (name, set(surrogate.choices(arch)) - keys)


def test_encoder_counts_choices_after_the_analytic_features() -> None:
    encoder = surrogate.Encoder.for_space(get_space("kws-layer"))
    phi = encoder.encode(KWS, 1000, 1e6, 10)
    assert phi[:5] == surrogate.features(1000, 1e6, 3, 10)
    counts = dict(zip(encoder.keys, phi[5:]))
    assert (
        counts["channels:16"] == 2
        and counts["stride_time:10"] == 1
        and counts["skip"] == 1
        and counts["op:dilated-conv2d"] == 0
    )
    assert sum(phi[5:]) == len(surrogate.choices(KWS))
    assert encoder.prior_mean[:5] == list(surrogate.PRIOR_MEAN) and set(encoder.prior_std[5:]) == {surrogate.CHOICE_STD}


def test_the_posterior_learns_a_choice_that_ruins_accuracy() -> None:
    """Same size and FLOPs, one choice differs: after a few children the posterior ranks the
    network without the bad choice first — what FLOPs alone cannot tell apart."""
    encoder = surrogate.Encoder.for_space(get_space("kws-layer"))
    good = parse_arch({"space": "kws-layer", "layers": [{"op": "gru", "src1": 0, "channels": 16, "directions": 1}]})
    bad = parse_arch(
        {
            "space": "kws-layer",
            "layers": [
                {
                    "op": "conv2d",
                    "src1": 0,
                    "channels": 16,
                    "width": 8,
                    "freq_width": 2,
                    "stride_time": 10,
                    "stride_freq": 1,
                    "activation": "relu",
                }
            ],
        }
    )
    phi_good, phi_bad = encoder.encode(good, 5000, 1e6, 8), encoder.encode(bad, 5000, 1e6, 8)
    assert encoder.fit([], []).predict([phi_good, phi_bad]).tolist()[0] == pytest.approx(
        encoder.fit([], []).predict([phi_bad]).item()
    )
    posterior = encoder.fit([phi_good, phi_bad, phi_good, phi_bad], [0.7, 0.1, 0.72, 0.12])
    high, low = posterior.predict([phi_good, phi_bad]).tolist()
    assert high > low + 0.3
