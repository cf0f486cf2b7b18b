"""``method.path_execution``: structured fission's stage copies run packed (one batched pass) compute what the loop
computes (outputs, gradients, BatchNorm statistics, state_dict) and train through the engine."""

import copy
import warnings

import pytest
import torch

from ensemblekit.errors import UserError
from ensemblekit.methods.fission.loss import fission_loss
from ensemblekit.methods.fission.packed_paths import resolve_path_execution
from ensemblekit.metrics import inference_flops
from ensemblekit.pruning.sparse_flops import sparse_inference_flops
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble, train
from tests.conftest import tiny_config


def _structured(members=3, path_execution="loop", dtype=torch.float64):
    options = {"name": "fission", "grouping": "channels", "members": members, "path_execution": path_execution}
    cfg = config_from_dict(tiny_config(method=options))
    method, ens = build_ensemble(cfg, 10, 192)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial BN affine parameters and statistics, distinct in every copy
        for name, t in [*ens.named_parameters(), *ens.named_buffers()]:
            if "bn" in name and t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
    return method, ens.to(dtype)


@pytest.mark.parametrize("members", [2, 3])
def test_packed_paths_equal_the_loop_in_float64_in_train_and_eval_mode(members):
    _, loop = _structured(members)
    packed = copy.deepcopy(loop)
    packed.path_execution = "packed"
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 16, 16, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (6,), generator=g)
    for training in (True, False, True):
        outs = []
        for net in (loop, packed):
            net.train(training).zero_grad()
            z = net(x)
            fission_loss(z, y).backward()
            outs.append(z)
        assert outs[0].shape == (members, 6, 10)
        torch.testing.assert_close(outs[1], outs[0], rtol=1e-12, atol=1e-12)
        grads = [{n: p.grad for n, p in net.named_parameters()} for net in (loop, packed)]
        assert all(g is not None for g in grads[1].values())
        for name, grad in grads[0].items():
            torch.testing.assert_close(grads[1][name], grad, rtol=1e-10, atol=1e-12, msg=name)
        states = [net.state_dict() for net in (loop, packed)]
        assert list(states[1]) == list(states[0])  # the checkpoint layout is the loop's
        for name, value in states[0].items():  # running statistics updated alike (train), untouched (eval)
            torch.testing.assert_close(states[1][name], value, rtol=1e-12, atol=1e-12, msg=name)
    assert int(loop.stages[-1][-1][0].bn1.num_batches_tracked) == 2  # the training forwards updated statistics
    packs = [pack for _, pack in packed._packer._packs.values() if pack is not None]
    assert len(packs) == loop.num_stages  # every stage but the shared first one, and the heads


def test_packed_paths_count_the_loops_flops():
    """FlopCounterMode sees the grouped convolutions; per-layer hooks (sparse FLOPs) make the copies loop."""
    _, loop = _structured(dtype=torch.float32)
    packed = copy.deepcopy(loop)
    packed.path_execution = "packed"
    packed(torch.zeros(2, 3, 16, 16))  # build (cache) the packs before the hooks come
    assert inference_flops(packed, (1, 3, 16, 16)) == inference_flops(loop, (1, 3, 16, 16))
    assert sparse_inference_flops(packed, (1, 3, 16, 16)) == sparse_inference_flops(loop, (1, 3, 16, 16))


def test_packed_paths_in_channels_last_equal_the_loop_without_a_vmap_fallback():
    """The engine runs conv nets channels-last; vmap has no batching rule for channels-last pooling."""
    _, loop = _structured(dtype=torch.float32)
    loop.to(memory_format=torch.channels_last)
    packed = copy.deepcopy(loop)
    packed.path_execution = "packed"
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z = packed(x)
        z.sum().backward()
    assert not [w for w in caught if "batching rule" in str(w.message)]
    torch.testing.assert_close(z, loop(x), rtol=1e-4, atol=1e-5)


def test_auto_packs_on_cuda_only_and_packed_needs_thin_copies():
    assert resolve_path_execution("auto", torch.device("cpu")) == "loop"
    assert resolve_path_execution("auto", torch.device("cuda")) == "packed"
    assert resolve_path_execution("packed", torch.device("cpu")) == "packed"
    with pytest.raises(UserError, match="path_execution: packed needs grouping: channels"):
        config_from_dict(tiny_config(method={"name": "fission", "grouping": "balanced", "path_execution": "packed"}))
    _, ens = build_ensemble(config_from_dict(tiny_config(method={"name": "fission"})), 10, 192)
    assert ens.path_execution == "loop"  # masked copies always loop


def test_packed_training_through_the_engine_matches_the_loop_run(tmp_path):
    records, states = {}, {}
    for mode in ("loop", "packed"):
        cfg = config_from_dict(
            tiny_config(
                method={"name": "fission", "grouping": "channels", "criterion": "random", "path_execution": mode},
                train={"epochs": 1},
            )
        )
        records[mode] = train(cfg, tmp_path / mode, quiet=True)
        states[mode] = torch.load(tmp_path / mode / "model.pt", weights_only=True)["state_dict"]
    assert list(states["packed"]) == list(states["loop"])
    for name, value in states["loop"].items():
        torch.testing.assert_close(states["packed"][name], value, rtol=1e-3, atol=1e-4, msg=name)
    m = records["packed"]["metrics"]
    assert m["accuracy"] == pytest.approx(records["loop"]["metrics"]["accuracy"], abs=1 / 64)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_packs_on_cuda_and_equals_the_loop_in_bf16_autocast():
    _, loop = _structured(dtype=torch.float32)
    loop.path_execution = "loop"
    loop.cuda().to(memory_format=torch.channels_last)
    auto = copy.deepcopy(loop)
    auto.path_execution = "auto"
    x = torch.randn(8, 3, 16, 16, device="cuda").contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (8,), device="cuda")
    outs = []
    for net in (loop, auto):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            z = net(x)
        fission_loss(z.float(), y).backward()
        outs.append(z.float())
    assert any(pack is not None for _, pack in auto._packer._packs.values())  # auto packed
    torch.testing.assert_close(outs[1], outs[0], rtol=0.05, atol=0.05)
    for (name, a), b in zip(loop.state_dict().items(), auto.state_dict().values(), strict=True):
        torch.testing.assert_close(b.float(), a.float(), rtol=0.05, atol=0.05, msg=name)
