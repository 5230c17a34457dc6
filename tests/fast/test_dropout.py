"""Dropout that draws only the dropped positions has torch's dropout distribution."""

import pytest
import torch


@pytest.mark.parametrize("p", [0.05, 0.3])
@pytest.mark.parametrize("per_round", [None, 7])  # 7: many rounds of drawn gaps per call
def test_fast_dropout_drops_each_element_independently_with_probability_p(p, per_round):
    from lmtune.fast.dropout import drop_positions
    torch.manual_seed(0)
    n = 400_000
    dropped = torch.zeros(n + 1, dtype=torch.bool)
    positions = drop_positions(n, p, per_round=per_round)
    assert bool((positions[1:] > positions[:-1]).all()) and 0 <= int(positions[0])
    assert int(positions[-1]) < n
    dropped[positions] = True
    dropped = dropped[:n].float()
    sigma = (p * (1 - p) / (n / 4)) ** 0.5
    # Every quarter (the end too: the drawn gaps must cover the whole tensor) at rate p.
    for quarter in dropped.view(4, -1):
        assert float(quarter.mean()) == pytest.approx(p, abs=5 * sigma)
    # Neighbours independent: both dropped at p^2, one element apart or 1000 apart.
    for lag in (1, 1000):
        both = float((dropped[lag:] * dropped[:-lag]).mean())
        assert both == pytest.approx(p * p, abs=5 * (p * p / (n - lag)) ** 0.5 + 1e-4)
    # Tiny tensors: the last element as likely as the first.
    counts = torch.zeros(3)
    for _ in range(5000):
        counts[drop_positions(3, p, per_round=per_round or 1)] += 1
    assert torch.allclose(counts / 5000, torch.full((3,), p), atol=5 * (p * (1 - p) / 5000) ** 0.5)


def test_fast_dropout_scales_kept_values_and_zeroes_the_same_gradients():
    from lmtune.fast.dropout import dropout
    torch.manual_seed(0)
    x = torch.rand(300, 500, dtype=torch.float64).add_(0.5).requires_grad_()
    y = dropout(x, 0.1)
    kept = y != 0
    assert float(kept.double().mean()) == pytest.approx(0.9, abs=5e-3)
    assert torch.allclose(y[kept], x[kept] / 0.9, rtol=1e-12)
    y.backward(torch.full_like(y, 2.0))
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept], torch.full_like(x.grad[kept], 2 / 0.9), rtol=1e-12)
    assert float(dropout(torch.ones(1000, 1000), 0.2).mean()) == pytest.approx(1.0, abs=5e-3)
    assert float(dropout(torch.ones(1000, 1000), 0.8).mean()) == pytest.approx(1.0, abs=1e-2)
    assert torch.equal(dropout(x, 0.3, training=False), x)
    torch.manual_seed(5)
    a = dropout(torch.ones(1000), 0.2)
    torch.manual_seed(5)
    assert torch.equal(a, dropout(torch.ones(1000), 0.2))  # the seed reproduces the mask
