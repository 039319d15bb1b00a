"""Activation checkpointing (`Mask2Former(checkpointing=True)`): same loss, same gradients."""

import pytest
import torch

from m2f_lightning.losses import SetCriterion
from tests.helpers import tiny_model


def loss_and_grads(model, images, targets):
    torch.manual_seed(0)
    loss = SetCriterion(model.num_classes, num_points=64)(model(images), targets)["loss"]
    loss.backward()
    return loss.detach(), {
        n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None
    }


@pytest.mark.parametrize("backbone", ["swin_t", "resnet18"])
def test_checkpointing_gives_the_same_loss_and_gradients(backbone) -> None:
    torch.manual_seed(3)
    plain = tiny_model(num_classes=4, backbone=backbone).train()
    checkpointed = tiny_model(num_classes=4, backbone=backbone, checkpointing=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    assert checkpointed.checkpointing and checkpointed.transformer_decoder.checkpointing
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 64, 64, generator=g) * 255
    targets = [
        {"labels": torch.tensor([1, 2]), "masks": torch.rand(2, 64, 64, generator=g) > 0.5}
        for _ in range(2)
    ]
    loss, grads = loss_and_grads(plain, images, targets)
    loss_ckpt, grads_ckpt = loss_and_grads(checkpointed, images, targets)
    assert torch.equal(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 50
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    checkpointed.set_checkpointing(False)
    assert not checkpointed.pixel_decoder.encoder.checkpointing
