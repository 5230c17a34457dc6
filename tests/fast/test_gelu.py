"""GPT-2's GELU as torch's fused op computes the same function."""

import torch

from lmtune.models.load import load_base
from lmtune.models.resolve import Resolved


def test_fused_gelu_computes_gpt2s_gelu(tiny_gpt2):
    from transformers.activations import NewGELUActivation

    from lmtune.fast.gelu import use_fused_gelu
    model = load_base(Resolved(str(tiny_gpt2), str(tiny_gpt2)))
    model.eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 24))
    with torch.no_grad():
        before = model(input_ids=ids).logits
        assert use_fused_gelu(model) == model.config.n_layer
        after = model(input_ids=ids).logits
    assert not any(isinstance(m, NewGELUActivation) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
