"""BatchNorm statistics per data-parallel replica (``train.replica_batch_size``) emulated on one device."""

import copy

import torch
from torch import nn

from ensemblekit.layers.batch_ensemble import EnsembleBatchNorm2d
from ensemblekit.models import create_model
from ensemblekit.resolve import config_from_dict
from ensemblekit.runs import build_ensemble, train
from ensemblekit.training.replica_bn import ReplicaBatchNormForward, use_replica_batchnorm
from tests.conftest import tiny_config


def _bns(net):
    return [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]


def test_a_network_with_replicas_equals_two_replicas_run_apart_as_ddp_without_syncbn_would():
    torch.manual_seed(0)
    net = create_model("resnet8", width=0.5).double().train()
    rank0, rank1 = copy.deepcopy(net), copy.deepcopy(net)
    assert use_replica_batchnorm(net, images=4) == len(_bns(net))
    x, y = torch.randn(8, 3, 16, 16, dtype=torch.float64), torch.arange(8) % 10

    out = net(x)
    out0, out1 = rank0(x[:4]), rank1(x[4:])
    torch.testing.assert_close(out, torch.cat([out0, out1]), rtol=1e-10, atol=1e-10)
    for bn, bn0 in zip(_bns(net), _bns(rank0), strict=True):  # running statistics: rank 0's (DDP broadcasts them)
        torch.testing.assert_close(bn.running_mean, bn0.running_mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, bn0.running_var, rtol=1e-12, atol=1e-12)
        assert bn.num_batches_tracked.item() == 1

    # gradients: the mean loss over all rows = DDP's average of the replicas' mean losses
    nn.functional.cross_entropy(out, y).backward()
    nn.functional.cross_entropy(out0, y[:4]).backward()
    nn.functional.cross_entropy(out1, y[4:]).backward()
    for p, p0, p1 in zip(net.parameters(), rank0.parameters(), rank1.parameters(), strict=True):
        torch.testing.assert_close(p.grad, (p0.grad + p1.grad) / 2, rtol=1e-9, atol=1e-12)


def test_tiled_rows_keep_every_images_copies_in_one_replica():
    torch.manual_seed(1)
    bn, ref = nn.BatchNorm2d(3), nn.BatchNorm2d(3)
    use_replica_batchnorm(bn, images=2, tile=2)
    x = torch.randn(8, 3, 4, 4)  # rows t·4 + j: copy t of image j
    out = bn(x)
    for rows in ([0, 1, 4, 5], [2, 3, 6, 7]):
        torch.testing.assert_close(out[rows], nn.functional.batch_norm(x[rows], None, None, training=True))
    ref(x[[0, 1, 4, 5]])
    torch.testing.assert_close(bn.running_mean, ref.running_mean)


def test_eval_mode_small_batches_and_state_dict_are_unchanged():
    bn = nn.BatchNorm2d(3)
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    use_replica_batchnorm(bn, images=4)
    assert bn.state_dict().keys() == state.keys()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(bn(x), nn.functional.batch_norm(x, None, None, training=True))  # one replica
    bn.eval()
    x = torch.randn(12, 3, 2, 2)
    torch.testing.assert_close(bn(x), nn.functional.batch_norm(x, bn.running_mean, bn.running_var))


def test_deep_copies_use_their_own_buffers():
    bn = nn.BatchNorm2d(2)
    use_replica_batchnorm(bn, images=2)
    twin = copy.deepcopy(bn)
    assert twin.forward.bn is twin
    twin(torch.randn(6, 2, 2, 2))
    assert twin.num_batches_tracked.item() == 1 and bn.num_batches_tracked.item() == 0


def test_config_sets_it_up_with_the_methods_tile():
    cfg = tiny_config(method={"name": "batch_ensemble", "members": 3, "ensemble_bn": True})
    cfg["train"]["replica_batch_size"] = 8
    _, ens = build_ensemble(config_from_dict(cfg), 10, 192)
    bns = [m for m in ens.modules() if isinstance(m, EnsembleBatchNorm2d)]
    assert bns and all(isinstance(m.forward, ReplicaBatchNormForward) and m.forward.tile == 3 for m in bns)
    _, plain = build_ensemble(config_from_dict(tiny_config()), 10, 192)
    assert not any(isinstance(m.forward, ReplicaBatchNormForward) for m in plain.modules())


def test_training_run_with_replicas(tmp_path):
    cfg = tiny_config(method={"name": "mixture", "members": 2, "execution": "loop"}, train={"epochs": 1})
    cfg["train"]["replica_batch_size"] = 16
    record = train(config_from_dict(cfg), tmp_path / "run", quiet=True)
    assert 0.0 <= record["metrics"]["accuracy"] <= 1.0
