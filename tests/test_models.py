"""The classifier: architecture, norm resolver, group-norm implementations, RUN save/load."""

import json
import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from mrrobust.errors import MrRobustError
from mrrobust.models import build, load, model_config, positive_probability, save
from mrrobust.models.norms import GROUP_NORM_IMPLS, GroupNorm, make_norm


def expected_parameters(width: int, blocks=(2, 2, 2, 2), labels=4, pool=10) -> int:
    """Parameter count of the study's network written out from its description."""
    total, cin = 9 * width, width  # 3x3 stem, one input channel, no bias
    for stage, count in enumerate(blocks):
        cout = width * 2**stage
        for b in range(count):
            total += 2 * cin + 9 * cin * cout + 2 * cout + 9 * cout * cout  # norm1 conv1 norm2 conv2
            total += cin * cout if (cin != cout or (b == 0 and stage > 0)) else 0  # projection
            cin = cout
    return total + labels * (cin * pool * pool * 2 + 2)


def test_study_network_has_about_11_6_million_parameters():
    model = build(model_config(norm="batch"))
    count = sum(p.numel() for p in model.parameters())
    assert count == expected_parameters(64)
    assert 11.5e6 < count < 11.7e6
    heads = list(model.heads.values())
    assert len(heads) == 4 and all(h.in_features == 51200 and h.out_features == 2 for h in heads)
    deeper = build(model_config(norm="batch", depth=34, width=8))
    assert sum(p.numel() for p in deeper.parameters()) == expected_parameters(8, (3, 4, 6, 3))


def test_forward_shape_and_probabilities():
    model = build(model_config(norm="group", width=8, groups=4)).eval()
    logits = model(torch.randn(3, 1, 64, 48))
    assert logits.shape == (3, 4, 2)
    probability = positive_probability(logits)
    assert probability.shape == (3, 4) and bool(((probability > 0) & (probability < 1)).all())


@pytest.mark.parametrize("kind, groups_of", [
    ("batch", None), ("group", lambda c: 4), ("layer", lambda c: 1),
    ("instance", lambda c: c), ("none", None)])
def test_norm_resolver(kind, groups_of):
    model = build(model_config(norm=kind, width=8, groups=4))
    norms = [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, GroupNorm))]
    if kind == "none":
        assert norms == []
        return
    assert len(norms) == 16  # two per block, eight blocks
    for norm in norms:
        if kind == "batch":
            assert isinstance(norm, nn.BatchNorm2d)
        else:
            assert norm.num_groups == groups_of(norm.num_channels)


def test_groups_not_dividing_names_the_layer():
    with pytest.raises(MrRobustError, match=r"--groups 3 .* 8 channels at layer stages\.0\.0\.norm1"):
        build(model_config(norm="group", width=8, groups=3))
    with pytest.raises(MrRobustError, match="unknown norm"):
        make_norm("weight", 8)


@pytest.mark.parametrize("impl", sorted(GROUP_NORM_IMPLS))
@pytest.mark.parametrize("groups", [1, 4, 16])
def test_group_norm_impls_match_torch(impl, groups):
    torch.manual_seed(0)
    reference = nn.GroupNorm(groups, 16)
    nn.init.normal_(reference.weight), nn.init.normal_(reference.bias)
    ours = GroupNorm(groups, 16, impl)
    ours.load_state_dict(reference.state_dict())
    x = (torch.randn(3, 16, 9, 7) * 3 + 5).requires_grad_()
    for layout in (torch.contiguous_format, torch.channels_last):
        xl = x.detach().contiguous(memory_format=layout).requires_grad_()
        y, y_ref = ours(xl), reference(x)
        torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-4)
        grad = torch.randn_like(y_ref)
        got = torch.autograd.grad(y, [xl, ours.weight], grad)
        want = torch.autograd.grad(y_ref, [x, reference.weight], grad)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = ours(x.detach().bfloat16())
    torch.testing.assert_close(y16.float(), reference(x).detach(), atol=0.1, rtol=0.05)


def test_auto_group_norm_takes_the_fused_path_under_compile(monkeypatch):
    import mrrobust.models.norms as norms

    torch.manual_seed(0)
    reference, ours = nn.GroupNorm(4, 16), GroupNorm(4, 16, "auto")
    x = torch.randn(2, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    calls, original = [], norms._group_norm_sums

    def spy(*args):
        calls.append(torch.compiler.is_compiling())
        return original(*args)

    monkeypatch.setattr(norms, "_group_norm_sums", spy)
    torch._dynamo.reset()
    y = torch.compile(ours, backend="aot_eager")(x)
    assert calls and all(calls)
    torch.testing.assert_close(y, reference(x), atol=2e-5, rtol=1e-4)
    traced = len(calls)
    ours(x)  # eager: the native kernel, not the fused formulation
    assert len(calls) == traced


def trained_model(norm="batch"):
    torch.manual_seed(1)
    model = build(model_config(norm=norm, width=8, groups=4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.randn(4, 1, 32, 32)).sum().backward()
    optimizer.step()
    return model.eval()


@pytest.mark.parametrize("norm", ["batch", "group"])
def test_safetensors_round_trip(tmp_path, norm):
    model = trained_model(norm)
    config = {"model": model_config(norm=norm, width=8, groups=4), "training": {"seed": 3}}
    save(model, config, tmp_path)
    loaded, loaded_config = load(tmp_path)
    assert loaded_config["training"] == {"seed": 3} and loaded_config["format"] == "mrrobust-run"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(2, 1, 32, 32)
    assert torch.equal(loaded(x), model(x))
    assert not loaded.training
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "model.safetensors"}


def test_load_needs_no_lightning(tmp_path):
    save(trained_model(), {"model": model_config(norm="batch", width=8)}, tmp_path)
    code = ("import sys; sys.modules['lightning'] = None; sys.modules['lightning.pytorch'] = None\n"
            "from mrrobust.models import load\n"
            f"model, config = load({str(tmp_path)!r}); print(type(model).__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "PreActResNet"


def test_pickles_and_foreign_files_are_refused(tmp_path):
    model = trained_model()
    save(model, {"model": model_config(norm="batch", width=8)}, tmp_path)
    weights = tmp_path / "model.safetensors"
    torch.save(model.state_dict(), weights)  # a zip-pickle under our name
    with pytest.raises(MrRobustError, match="is a pickle"):
        load(tmp_path)
    weights.write_bytes(pickle.dumps(model.state_dict()))  # a raw pickle
    with pytest.raises(MrRobustError, match="is a pickle"):
        load(tmp_path)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    with pytest.raises(MrRobustError, match="not a mrrobust model"):
        load(tmp_path)
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage")
    with pytest.raises(MrRobustError, match="not a readable safetensors"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(MrRobustError, match="not a mrrobust RUN config"):
        load(tmp_path)
    with pytest.raises(MrRobustError, match="does not exist"):
        load(tmp_path / "missing")


@pytest.mark.parametrize("impl", sorted(GROUP_NORM_IMPLS))
@pytest.mark.parametrize("offset", [1e3, 1e4])
def test_group_norm_is_stable_at_large_offsets(impl, offset):
    """Unnormalised MR intensities: mean/std up to 1e4 must not wreck the statistics
    (E[x^2] - E[x]^2 in float32 was off by 0.36 at 1e3). Reference: float64."""
    torch.manual_seed(0)
    import torch.nn.functional as F

    x = torch.randn(2, 16, 12, 10) * torch.rand(1, 16, 1, 1).add(0.5) + offset
    weight, bias = torch.randn(16), torch.randn(16)
    want = F.group_norm(x.double(), 4, weight.double(), bias.double(), 1e-5)
    ours = GroupNorm(4, 16, impl)
    ours.load_state_dict({"weight": weight, "bias": bias})
    for layout in (torch.contiguous_format, torch.channels_last):
        got = ours(x.contiguous(memory_format=layout)).double()
        # float32 input quantisation alone is offset * 6e-8 relative to a unit std
        assert (got - want).abs().max() < offset * 1e-6, (impl, layout)
    compiled = torch.compile(ours, backend="aot_eager")  # `auto` takes the `sums` path here
    torch._dynamo.reset()
    got = compiled(x.contiguous(memory_format=torch.channels_last)).double()
    assert (got - want).abs().max() < offset * 1e-6, impl


def test_load_refuses_weights_that_do_not_fit_the_config(tmp_path):
    model = trained_model()
    save(model, {"model": model_config(norm="batch", width=8)}, tmp_path)
    config_path = tmp_path / "config.json"
    config = json.loads(config_path.read_text())
    config["model"]["width"] = 16  # same keys, other shapes
    config_path.write_text(json.dumps(config))
    with pytest.raises(MrRobustError, match=r"does not match its config.json .*other shape"):
        load(tmp_path)
    config["model"]["depth"] = 34  # more blocks: missing keys
    config_path.write_text(json.dumps(config))
    with pytest.raises(MrRobustError, match=r"missing \['stages"):
        load(tmp_path)
    for bad, field in (([1, 2], "model"), ("preact_resnet", "model"), ({"width": "wide"}, "model.arch")):
        config["model"] = bad
        config_path.write_text(json.dumps(config))
        with pytest.raises(MrRobustError, match=rf"config.json: field {field}: .*re-run `mrrobust train`"):
            load(tmp_path)  # the contract refuses the file before any model is built
    with pytest.raises(MrRobustError, match="cannot build a model"):
        build([1, 2])


def test_atomic_write_leaves_no_temporary_file_on_failure(tmp_path):
    from mrrobust.models import atomic_write

    def failing(path):
        path.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(tmp_path / "x.json", failing)
    assert list(tmp_path.iterdir()) == []
    atomic_write(tmp_path / "x.json", lambda p: p.write_text("whole"))
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
