"""``layer_flops``, the one sparse FLOP counter, against a count by hand."""

import torch
from torch import nn

from ensemblekit.metrics import inference_flops
from ensemblekit.pruning.sparse_flops import layer_flops, sparse_inference_flops


class _Tiny(nn.Module):
    """conv 2->3 (3x3, padding 1) on 4x4, flatten, linear 48->5, then one 5->5 linear run twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
        self.fc = nn.Linear(48, 5)
        self.shared = nn.Linear(5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shared(self.shared(self.fc(self.conv(x).flatten(1))))


def test_layer_flops_match_a_hand_count_of_dense_and_nonzero_multiply_adds():
    net = _Tiny()
    with torch.no_grad():
        net.conv.weight.view(-1)[:20] = 0.0  # 54 entries, 34 left
        net.fc.weight.view(-1)[:40] = 0.0  # 240 entries, 200 left
    net.train()
    counts = layer_flops(net, (1, 2, 4, 4))
    # conv: 2 FLOPs x |W| x 16 output positions; linear: 2 x |W|; the shared linear counts twice (25 entries each)
    assert counts == {
        "conv": {"dense": 2 * 54 * 16, "sparse": 2 * 34 * 16},
        "fc": {"dense": 2 * 240, "sparse": 2 * 200},
        "shared": {"dense": 2 * 2 * 25, "sparse": 2 * 2 * 25},
    }
    assert net.training  # the train/eval flags are restored
    totals = sparse_inference_flops(net, (1, 2, 4, 4))
    assert totals == {"dense": 1728 + 480 + 100, "sparse": 1088 + 400 + 100}
    assert totals["dense"] == inference_flops(net, (1, 2, 4, 4))  # the dense count is torch's flop counter's
