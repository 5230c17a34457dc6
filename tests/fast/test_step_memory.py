"""The step workspace and direct gradients (fast/step_memory.py) are an optimisation only:
the same gradients as autograd's, and the model as it was once the context ends."""

import pytest
import torch
from loss_helpers import grads as _grads, packed_batch as _batch

from lmtune.models.forward import loss_sum
from lmtune.models.load import load_base
from lmtune.models.resolve import Resolved


@pytest.mark.parametrize("fixture", ["tiny_gpt2", "tiny_llama"])  # tied head; untied head
def test_step_memory_gives_the_same_gradients_and_then_steps_aside(fixture, request):
    """One CPU process keeps the loss's buffers between steps and accumulates the embedding's
    and head's gradients into persistent buffers (step_memory.py): the gradients must equal
    autograd's, over two micro-batches, and the model must be as before afterwards."""
    from lmtune.fast.step_memory import cpu_step_memory
    folder = request.getfixturevalue(fixture)
    torch.manual_seed(0)
    model = load_base(Resolved(str(folder), str(folder)))
    model.train()
    batch = _batch(folder)
    embedding = model.get_input_embeddings()

    def two_micro_batches():
        model.zero_grad(set_to_none=True)
        for scale in (3.0, 5.0):  # the loop's division by the target count
            torch.manual_seed(1)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = loss_sum(model, batch, "cpu")
            (loss / scale).backward()
        return _grads(model)

    plain = two_micro_batches()
    for _ in range(2):  # the second step reuses the buffers the first one left
        with cpu_step_memory(model):
            assert "forward" in vars(embedding)  # the embedding's backward is ours
            kept = two_micro_batches()
        assert kept.keys() == plain.keys() and plain
        for name in plain:  # the same sums, added in another order
            torch.testing.assert_close(kept[name], plain[name], rtol=1e-5, atol=1e-7)
    assert "forward" not in vars(embedding)
    assert two_micro_batches().keys() == plain.keys()


def test_direct_embedding_gradient_skips_the_padding_row():
    from lmtune.fast import step_memory
    torch.manual_seed(0)
    emb = torch.nn.Embedding(10, 4, padding_idx=0)
    ids = torch.tensor([[0, 3, 3, 7], [0, 1, 9, 3]])
    out_grad = torch.randn(2, 4, 4)
    emb(ids).backward(out_grad)
    expected = emb.weight.grad.clone()
    emb.weight.grad = None
    memory = step_memory.StepMemory()
    step_memory._EmbeddingDirectGrad.apply(emb.weight, ids, 0, memory).backward(out_grad)
    torch.testing.assert_close(emb.weight.grad, expected)
    assert float(emb.weight.grad[0].abs().sum()) == 0
