"""Opt-in torch.compile (`Mask2Former.compile_for_training`): same outputs, same state dict."""

import pytest
import torch

from tests.helpers import tiny_model


@pytest.mark.slow
def test_compiled_model_gives_the_eager_outputs_and_keeps_its_keys(tmp_path) -> None:
    torch.manual_seed(0)
    eager = tiny_model(num_classes=3).eval()
    compiled = tiny_model(num_classes=3).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_for_training(cache_dir=tmp_path / "inductor")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    images = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 255
    with torch.no_grad():
        ref, got = eager(images), compiled(images)
    torch.testing.assert_close(got["pred_masks"], ref["pred_masks"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["pred_logits"], ref["pred_logits"], rtol=1e-4, atol=1e-4)
    assert any((tmp_path / "inductor").iterdir())
