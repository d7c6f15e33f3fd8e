"""Test-time adaptation: BN-adapt with a prior against torch's own batch norm, TENT against a
step-by-step re-derivation with torch autograd and Adam."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from mrrobust.adaptation import binary_entropy, prior_batch_norm, tent_predict


class Tiny(nn.Module):
    """conv -> BN -> ReLU -> pool -> linear to logits (B, 4, 2)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3, padding=1)
        self.norm = nn.BatchNorm2d(6)
        self.head = nn.Linear(6, 8)

    def forward(self, x):
        h = torch.relu(self.norm(self.conv(x))).mean(dim=(2, 3))
        return self.head(h).view(-1, 4, 2)


@pytest.fixture()
def model():
    torch.manual_seed(0)
    net = Tiny()
    net.train()
    with torch.no_grad():  # give the running statistics something other than 0 / 1
        for _ in range(5):
            net(torch.randn(16, 1, 8, 8) * 2 + 1)
    return net.eval()


def test_prior_zero_is_the_train_mode_forward_and_a_huge_prior_the_trained_network(model):
    x = torch.randn(10, 1, 8, 8) * 3 - 1
    train_mode = copy.deepcopy(model)
    train_mode.norm.train()
    with torch.no_grad():
        expected = train_mode(x)
        torch.testing.assert_close(prior_batch_norm(model, 0.0)(x), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(prior_batch_norm(model, 1e12)(x), model(x), rtol=1e-5, atol=1e-5)


def test_prior_mixes_running_and_batch_statistics_by_n_over_n_plus_batch(model):
    x = torch.randn(4, 1, 8, 8) * 2
    prior = 12.0
    with torch.no_grad():
        h = model.conv(x).double()
        mean, var = h.mean(dim=(0, 2, 3)), h.var(dim=(0, 2, 3), unbiased=False)
        w = prior / (prior + 4)
        mu = w * model.norm.running_mean.double() + (1 - w) * mean
        sigma2 = w * model.norm.running_var.double() + (1 - w) * var
        normed = (h - mu[None, :, None, None]) / torch.sqrt(sigma2[None, :, None, None] + model.norm.eps)
        normed = normed * model.norm.weight.double()[None, :, None, None] + model.norm.bias.double()[None, :, None, None]
        expected = model.head(torch.relu(normed).mean(dim=(2, 3)).float()).view(-1, 4, 2)
        adapted = prior_batch_norm(model, prior)
        torch.testing.assert_close(adapted(x), expected, rtol=1e-4, atol=1e-5)
    assert isinstance(model.norm, nn.BatchNorm2d)  # the input model is untouched
    with pytest.raises(ValueError):
        prior_batch_norm(model, -1.0)


def test_binary_entropy_by_hand():
    logits = torch.tensor([[[0.0, 0.0], [2.0, -1.0]]])
    p = torch.softmax(logits, dim=-1)
    expected = -(p * p.log()).sum(-1).mean()
    assert float(binary_entropy(logits)) == pytest.approx(float(expected))
    assert float(binary_entropy(torch.tensor([[[0.0, 0.0]]]))) == pytest.approx(np.log(2))


def test_tent_predicts_each_batch_before_its_update_with_batch_statistics(model):
    """Re-derived: batch 1 is predicted by the trained weights on batch statistics; then one Adam
    step (lr 1e-3) on the mean binary entropy moves only the BN weight and bias; batch 2 is
    predicted by that updated network."""
    torch.manual_seed(1)
    batches = [torch.randn(8, 1, 8, 8) * 2 + 0.5 for _ in range(3)]
    before = copy.deepcopy(model.state_dict())
    got = tent_predict(model, batches, lr=1e-3)
    for key, value in model.state_dict().items():  # untouched
        torch.testing.assert_close(value, before[key])

    reference = copy.deepcopy(model)
    reference.norm.train()
    reference.norm.track_running_stats = False
    reference.norm.running_mean = reference.norm.running_var = None
    params = [reference.norm.weight, reference.norm.bias]
    for p in reference.parameters():
        p.requires_grad_(any(p is q for q in params))
    optimizer = torch.optim.Adam(params, lr=1e-3)
    expected = []
    conv_before = reference.conv.weight.detach().clone()
    for x in batches:
        logits = reference(x)
        expected.append(torch.softmax(logits, -1)[..., 1].detach())
        p = torch.softmax(logits, -1)
        loss = -(p * torch.log_softmax(logits, -1)).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    np.testing.assert_allclose(got, torch.cat(expected).numpy(), rtol=0, atol=1e-6)
    torch.testing.assert_close(reference.conv.weight, conv_before)  # only BN affine trained
    # the first batch: plain batch statistics, no update yet
    first = copy.deepcopy(model)
    first.norm.train()
    with torch.no_grad():
        np.testing.assert_allclose(got[:8], torch.softmax(first(batches[0]), -1)[..., 1].numpy(), atol=1e-6)
    assert not np.allclose(got[8:16], torch.softmax(first(batches[1]), -1)[..., 1].detach().numpy(), atol=1e-7)


def test_tent_lowers_the_entropy_of_a_repeated_batch(model):
    x = torch.randn(16, 1, 8, 8) * 3
    got = tent_predict(model, [x] * 30, lr=1e-2)
    p = got.reshape(30, 16, 4)

    def entropy(q):
        return float(-(q * np.log(q) + (1 - q) * np.log(1 - q)).mean())

    assert entropy(p[-1]) < entropy(p[0])
