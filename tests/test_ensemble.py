import pytest
import torch
from torch import nn

from ensemblekit import MemberEnsemble, combine_logits, predict
from ensemblekit.methods.mc_dropout import MCDropoutEnsemble


def test_combine_probs_is_the_mean_of_softmaxes():
    z = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])  # [M=2, B=1, C=2]
    p0 = torch.tensor([1 / (1 + torch.e**-2), 1 / (1 + torch.e**2)])
    expected = (p0 + torch.tensor([0.5, 0.5])) / 2
    assert torch.allclose(combine_logits(z, "probs")[0], expected)


def test_combine_logits_is_the_softmax_of_the_mean_logit():
    z = torch.tensor([[[2.0, 0.0]], [[0.0, 0.0]]])
    assert torch.allclose(combine_logits(z, "logits")[0], torch.tensor([1.0, 0.0]).softmax(0))


def test_combine_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[M, B, C\]"):
        combine_logits(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="unknown combine rule"):
        combine_logits(torch.zeros(1, 3, 4), "median")


def test_member_ensemble_stacks_members_in_order():
    torch.manual_seed(0)
    members = [nn.Linear(4, 3) for _ in range(3)]
    ens = MemberEnsemble(members)
    x = torch.randn(5, 4)
    out = ens(x)
    assert out.shape == (3, 5, 3) and ens.num_members == 3
    for i, m in enumerate(members):
        assert torch.equal(out[i], m(x))
    assert torch.allclose(predict(ens, x), out.softmax(-1).mean(0))
    assert ens.member_modules() == members


def test_predict_uses_the_ensemble_rule_and_accepts_plain_networks():
    torch.manual_seed(0)
    ens = MemberEnsemble([nn.Linear(4, 3), nn.Linear(4, 3)], combine="logits")
    x = torch.randn(2, 4)
    assert torch.allclose(predict(ens, x), ens(x).mean(0).softmax(-1))
    net = nn.Linear(4, 3)
    assert torch.allclose(predict(net, x), net(x).softmax(-1))


def test_member_ensemble_validates():
    with pytest.raises(ValueError, match="at least one member"):
        MemberEnsemble([])
    with pytest.raises(ValueError, match="unknown combine rule"):
        MemberEnsemble([nn.Linear(2, 2)], combine="vote")


def test_mc_dropout_passes_differ_and_restore_the_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 3)).eval()
    ens = MCDropoutEnsemble(net, samples=4)
    out = ens(torch.randn(6, 8))
    assert out.shape == (4, 6, 3)
    assert not torch.allclose(out[0], out[1])
    assert not net[1].training
    with pytest.raises(ValueError, match="dropout"):
        MCDropoutEnsemble(nn.Linear(2, 2), samples=2)
