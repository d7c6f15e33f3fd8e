"""BN statistics shift (BNRecorder) and AdaBN (adapt_batch_norm), checked against torch's
own statistics of inputs captured by plain hooks and against torch's momentum=None update."""

import copy
import math

import pytest
import torch
from torch import nn

from mrrobust.analysis import BNRecorder, adapt_batch_norm, has_batch_norm
from mrrobust.errors import MrRobustError
from mrrobust.models import build, model_config

STATS = ("running_mean", "running_var", "num_batches_tracked")


def tiny_model(norm: str = "batch", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build(model_config(norm=norm, width=8, groups=4, pool=2)).eval()


def images(n: int, seed: int, size: int = 32) -> torch.Tensor:
    """Magnitude-like inputs `(n, 1, size, size)`: positive, with a per-image offset."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=gen) * 2 + torch.rand(n, 1, 1, 1, generator=gen)


def bn_modules(model):
    return [(name, m) for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


def captured_inputs(model, batches) -> dict[str, torch.Tensor]:
    """Every BN layer's inputs over `batches`, concatenated along the batch axis (float64)."""
    seen = {name: [] for name, _ in bn_modules(model)}
    handles = [m.register_forward_hook(lambda mod, args, out, name=name:
                                       seen[name].append(args[0].detach().double().clone()))
               for name, m in bn_modules(model)]
    with torch.no_grad():
        for x in batches:
            model(x)
    for h in handles:
        h.remove()
    return {name: torch.cat(xs) for name, xs in seen.items()}


def randomise_running_stats(model, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _, m in bn_modules(model):
        m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
        m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2 + 0.1)


def test_rows_match_statistics_of_the_captured_inputs():
    model = tiny_model()
    randomise_running_stats(model, seed=1)
    batches = [images(5, seed=s) for s in (2, 3, 4)]
    inputs = captured_inputs(model, batches)
    with BNRecorder(model) as recorder:
        with torch.no_grad():
            for x in batches:
                model(x)
    rows = recorder.rows()
    names = [name for name, _ in bn_modules(model)]
    assert [r["layer"] for r in rows] == names and len(names) == 16
    assert [r["depth"] for r in rows] == list(range(16))
    for row, (name, m) in zip(rows, bn_modules(model)):
        x = inputs[name]
        assert row["channels"] == m.num_features == x.shape[1]
        var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
        rm, rv = m.running_mean.double(), m.running_var.double()
        shift = ((mean - rm).abs() / (rv + m.eps).sqrt()).mean().item()
        ratio = torch.log((var + m.eps) / (rv + m.eps)).mean().item()
        assert row["mean_shift"] == pytest.approx(shift, rel=1e-6, abs=1e-9)  # float32 per-batch moments
        assert row["var_log_ratio"] == pytest.approx(ratio, rel=1e-6, abs=1e-9)
    # hooks are gone after the block: more forwards change nothing; reset clears
    with torch.no_grad():
        model(images(5, seed=9) * 3)
    assert recorder.rows() == rows
    recorder.reset()
    assert all(math.isnan(r["mean_shift"]) and math.isnan(r["var_log_ratio"])
               for r in recorder.rows())


def test_recorder_is_accurate_for_channels_last_bf16_and_offset_inputs():
    bn = nn.BatchNorm2d(3).eval()
    gen = torch.Generator().manual_seed(0)
    # a large offset with a small spread: a float32 E[x^2] - E[x]^2 would lose the variance
    parts = [(torch.randn(n, 3, 7, 5, generator=gen) * 0.01 + 1e3) for n in (2, 5, 1)]
    parts.append(torch.randn(4, 3, 7, 5, generator=gen).to(torch.bfloat16))
    recorder = BNRecorder(bn)
    with recorder:
        for i, x in enumerate(parts):
            x = x.to(memory_format=torch.channels_last) if i % 2 else x
            recorder._hook("")(bn, (x,))  # the hook alone: bf16 BN kernels are not needed
    x = torch.cat([p.double() for p in parts])
    var, mean = torch.var_mean(x, dim=(0, 2, 3), correction=1)
    got_mean, got_var = recorder.statistics()[""]
    torch.testing.assert_close(got_mean, mean, rtol=1e-7, atol=1e-9)  # float32 moments per batch, merged in float64
    torch.testing.assert_close(got_var, var, rtol=1e-5, atol=1e-9)


def test_adapted_statistics_give_no_shift_and_artifacts_do():
    model = tiny_model()
    clean = images(24, seed=5)
    adapted = adapt_batch_norm(model, [clean])

    def rows(m, x):
        with BNRecorder(m) as recorder, torch.no_grad():
            m(x)
        return recorder.rows()

    same = rows(adapted, clean)
    # the first layer's input does not depend on BN: exactly the adapted statistics
    assert abs(same[0]["mean_shift"]) < 1e-6 and abs(same[0]["var_log_ratio"]) < 1e-6
    # deeper layers: train mode normalised with the biased batch variance, eval mode with the
    # unbiased running one (torch's convention), a factor n / (n - 1) per layer (n = B*H*W,
    # 384 in the last stage) that compounds with depth
    assert max(abs(r["mean_shift"]) for r in same) < 5e-3
    assert max(abs(r["var_log_ratio"]) for r in same) < 2e-2
    # an intensity artifact moves every layer away from the adapted statistics
    shifted = rows(adapted, clean * 2 + 1)
    assert all(s["mean_shift"] > 0.1 + c["mean_shift"] for s, c in zip(shifted, same))
    # the stem has no bias and zero padding: doubling the input doubles the first BN input
    doubled = rows(adapted, clean * 2)[0]
    first = bn_modules(adapted)[0][1]
    mu, v, eps = first.running_mean.double(), first.running_var.double(), first.eps
    assert doubled["mean_shift"] == pytest.approx((mu.abs() / (v + eps).sqrt()).mean().item(), rel=1e-5)
    assert doubled["var_log_ratio"] == pytest.approx(
        torch.log((4 * v + eps) / (v + eps)).mean().item(), rel=1e-5)


def torch_momentum_none(model, batches):
    """The reference AdaBN: torch's cumulative average (momentum=None) in BN train mode."""
    ref = copy.deepcopy(model).eval()
    for _, m in bn_modules(ref):
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        for x in batches:
            ref(x)
    return ref.eval()


def test_adapt_equals_torch_for_one_batch_and_leaves_the_model_untouched():
    model = tiny_model()
    randomise_running_stats(model, seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(16, seed=6)
    adapted = adapt_batch_norm(model, [x])
    reference = torch_momentum_none(model, [x])
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert adapted is not model and not adapted.training
    assert not any(m.training for m in adapted.modules())
    got, want = adapted.state_dict(), reference.state_dict()
    for key, value in got.items():
        if key.rsplit(".", 1)[-1] in STATS:
            torch.testing.assert_close(value, want[key], rtol=1e-4, atol=1e-6)
            assert not torch.equal(value, before[key])
        else:
            assert torch.equal(value, before[key]), key
    assert all(m.num_batches_tracked.item() == 1 for _, m in bn_modules(adapted))
    # the adapted copy predicts what torch's adapted model predicts
    torch.testing.assert_close(adapted(x), reference(x), rtol=1e-4, atol=1e-5)


def test_adapt_is_the_population_statistic_whatever_the_batch_split():
    model = tiny_model()
    x = images(20, seed=7)
    first = bn_modules(model)[0][0]  # its input (the stem's output) does not depend on BN
    stem_out = captured_inputs(model, [x])[first]
    var, mean = torch.var_mean(stem_out, dim=(0, 2, 3), correction=1)
    splits = [[x], list(x.split(4)), [x[:3], x[3:]]]
    for split in splits:
        bn = dict(bn_modules(adapt_batch_norm(model, split)))[first]
        torch.testing.assert_close(bn.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var.double(), var, rtol=1e-5, atol=1e-6)
        assert bn.num_batches_tracked.item() == len(split)
    # torch's momentum=None averages per-batch statistics instead: with unequal batches its
    # mean is off the population mean, and its variance misses the spread of batch means
    bn = dict(bn_modules(torch_momentum_none(model, splits[2])))[first]
    assert ((bn.running_mean.double() - mean).abs() / var.sqrt()).max() > 1e-3
    assert ((bn.running_var.double() - var).abs() / var).max() > 1e-3


def test_adapt_runs_only_batch_norm_in_train_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.9),
                        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)).train()
    x = images(8, seed=8, size=12)
    adapted = adapt_batch_norm(net, [x])
    without_dropout = copy.deepcopy(net)
    without_dropout[2] = nn.Identity()
    reference = torch_momentum_none(without_dropout, [x])
    torch.testing.assert_close(adapted[4].running_var, reference[4].running_var, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(adapted[4].running_mean, reference[4].running_mean, rtol=1e-4, atol=1e-6)
    assert not adapted.training and net.training  # the input model keeps its mode
    with pytest.raises(MrRobustError, match="no input batches"):
        adapt_batch_norm(net, [])


def test_group_norm_model_has_no_batch_norm_rows_and_adapts_to_an_equal_copy():
    model = tiny_model("group", seed=1)
    assert not has_batch_norm(model) and has_batch_norm(tiny_model("batch"))
    x = images(4, seed=9)
    with BNRecorder(model) as recorder, torch.no_grad():
        model(x)
    assert recorder.rows() == []
    adapted = adapt_batch_norm(model, [x])
    assert adapted is not model and not adapted.training
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in adapted.state_dict().items())
    with torch.no_grad():
        assert torch.equal(adapted(x), model(x))
