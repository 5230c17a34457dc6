import torch

from lmtune.training.flops import flops_per_token, peak_flops


def test_measuring_the_cpu_peak_leaves_the_training_rng_alone():
    # It once drew from the global RNG, so the first run in a process got other dropout masks
    # than a resumed or repeated run with the same seed.
    peak_flops.cache_clear()
    before = torch.get_rng_state()
    assert peak_flops("cpu", "fp32") > 1e9
    assert torch.equal(before, torch.get_rng_state())


def test_flops_per_token_counts_backward_weight_gradients_only_when_weights_train():
    assert flops_per_token(100, 100) == 600
    assert flops_per_token(100, 2) == 400


def test_a_cpu_without_native_bf16_reports_no_bf16_peak_instead_of_timing_the_emulation(
        monkeypatch):
    import time

    monkeypatch.setattr("lmtune.training.flops.cpu_has_bf16", lambda: False)
    peak_flops.cache_clear()
    t0 = time.perf_counter()
    assert peak_flops("cpu", "bf16") is None
    assert time.perf_counter() - t0 < 0.5
    peak_flops.cache_clear()
