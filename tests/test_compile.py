"""Opt-in torch.compile (`Mask2Former.compile_network`): same outputs and gradients, same state
dict, and the compiled graphs cached where asked."""

import pytest
import torch

from tests.helpers import tiny_model


@pytest.mark.slow
def test_compiled_model_gives_the_eager_outputs_and_keeps_its_keys(tmp_path) -> None:
    torch.manual_seed(0)
    eager = tiny_model(num_classes=3).eval()
    compiled = tiny_model(num_classes=3).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_network(cache_dir=tmp_path / "inductor")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        ref, got = eager(images), compiled(images)
    torch.testing.assert_close(got["pred_masks"], ref["pred_masks"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["pred_logits"], ref["pred_logits"], rtol=1e-4, atol=1e-4)
    assert any((tmp_path / "inductor").iterdir())
    # and the backward pass (what `compile=true` training runs): the same gradients
    for model in (eager, compiled):
        out = model(images)
        (out["pred_masks"].square().mean() + out["pred_logits"].logsumexp(-1).mean()).backward()
    grads = {name: p.grad for name, p in compiled.named_parameters() if p.grad is not None}
    assert len(grads) > 0.9 * sum(1 for _ in eager.parameters())
    for name, p in eager.named_parameters():
        if name in grads:
            torch.testing.assert_close(grads[name], p.grad, rtol=1e-3, atol=1e-5, msg=name)
