"""SynFlow and GraSP against independent references: hand/Hessian computations on tiny nets, finite differences
and conservation laws on a ResNet."""

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, jvp

from ensemblekit.models import create_model
from ensemblekit.pruning.criteria import compute_scores, grasp_scores, synflow_scores

RESNET_CUTS = [  # sets of layers every input-output path of resnet8 crosses exactly once (projection shortcuts)
    ["stem.conv"],
    ["stages.1.0.conv1", "stages.1.0.shortcut.conv"],
    ["stages.1.0.conv2", "stages.1.0.shortcut.conv"],
    ["stages.2.0.conv1", "stages.2.0.shortcut.conv"],
    ["stages.2.0.conv2", "stages.2.0.shortcut.conv"],
    ["head.fc"],
]


def _resnet(seed=0):
    torch.manual_seed(seed)
    return create_model("resnet8", num_classes=10, width=0.25)


def test_synflow_on_a_two_layer_net_by_hand():
    """R = 1ᵀ|W2||W1|1 for x = 1: ∂R/∂W1_ij = (1ᵀ|W2|)_i and ∂R/∂W2_ki = Σ_j |W1_ij|, so with
    W1 = [[1, -2], [3, 0.5]] and W2 = [[-1, 2]]: R = 1·3 + 2·3.5 = 10, S(W1) = [[1, 2], [6, 1]],
    S(W2) = [[3, 7]], and every layer's scores sum to R (Tanaka et al., 2020, Theorem 2: conservation)."""
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.ReLU(), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, 0.5]]))
        net[2].weight.copy_(torch.tensor([[-1.0, 2.0]]))
    scores = synflow_scores(net, ["0", "2"], density=1.0, image_shape=(2,), rounds=1)
    assert scores["0"].tolist() == [[1.0, 2.0], [6.0, 1.0]]
    assert scores["2"].tolist() == [[3.0, 7.0]]
    assert float(scores["0"].sum()) == float(scores["2"].sum()) == 10.0


def test_synflow_on_a_resnet_ignores_the_data_and_conserves_saliency_across_every_cut():
    """Tanaka et al. (NeurIPS 2020): for a network positively homogeneous in the weights of a cut C (no biases;
    BN at its initial statistics μ = 0, β = 0 is a positive scaling), R(α W_C) = α R, so Σ_{j∈C} S_j = R by
    Euler's theorem; layers bypassed by an identity shortcut sum to less. Scores are data-free."""
    net = _resnet()
    with torch.no_grad():
        net.head.fc.bias.zero_()
    layers = sorted({n for cut in RESNET_CUTS for n in cut} | {"stages.0.0.conv1"})
    scores = synflow_scores(net, layers, density=1.0, image_shape=(3, 8, 8), rounds=1)
    work = create_model("resnet8", num_classes=10, width=0.25)
    work.load_state_dict(net.state_dict())
    work = work.double().eval()
    with torch.no_grad():
        for t in [*work.parameters(), *work.buffers()]:
            if t.is_floating_point():
                t.abs_()
        r = float(work(torch.ones(1, 3, 8, 8, dtype=torch.float64)).sum())
    for cut in RESNET_CUTS:
        total = sum(float(scores[n].double().sum()) for n in cut)
        assert abs(total - r) < 1e-5 * r, (cut, total, r)
    assert float(scores["stages.0.0.conv1"].sum()) < (1 - 1e-3) * r  # not a cut: the identity shortcut bypasses it
    g = torch.Generator().manual_seed(1)
    for scale in (0.0, 5.0):  # whatever batches are passed, SynFlow never looks at them
        batches = [(scale * torch.randn(4, 3, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))]
        other = compute_scores(
            "synflow", net, layers, batches=batches, density=1.0, image_shape=(3, 8, 8), synflow_rounds=1
        )
        assert all(torch.equal(other[n], scores[n]) for n in layers)


def _flat_loss(params, shapes, x, y, temperature):
    """CE(f(x)/T, y) for f = W2 tanh(W1 x + b1) + b2 with W1, W2 taken from the flat vector ``params``."""
    w1 = params[: shapes[0].numel()].view(shapes[0])
    w2 = params[shapes[0].numel() :].view(shapes[1])
    b1, b2 = torch.linspace(-0.2, 0.3, shapes[0][0], dtype=params.dtype), torch.tensor([0.1, -0.1, 0.05]).to(params)
    return F.cross_entropy((torch.tanh(x @ w1.T + b1) @ w2.T + b2) / temperature, y)


def test_grasp_on_a_two_layer_net_matches_the_full_hessian_over_both_layers_and_batches():
    """Wang, Zhang & Grosse (ICLR 2020): S(−θ) = −θ ⊙ H g over all scored weights jointly (the Hessian's
    cross-layer blocks included), g and H g summed over the batches; ``grasp`` returns −S (highest kept).
    Reference: the explicit Hessian of the loss of the flattened weights of both layers (float64)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        net[0].bias.copy_(torch.linspace(-0.2, 0.3, 5))
        net[2].bias.copy_(torch.tensor([0.1, -0.1, 0.05]))
    batches = [(torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 3, (6,))) for _ in range(2)]
    t = 2.0
    shapes = [net[0].weight.shape, net[2].weight.shape]
    theta = torch.cat([net[0].weight.detach().flatten(), net[2].weight.detach().flatten()])
    g = sum(torch.autograd.functional.jacobian(lambda p, b=b: _flat_loss(p, shapes, *b, t), theta) for b in batches)
    h = sum(torch.autograd.functional.hessian(lambda p, b=b: _flat_loss(p, shapes, *b, t), theta) for b in batches)
    paper_score = -theta * (h @ g)  # S(−θ), removed from the top in GraSP
    scores = grasp_scores(net, ["0", "2"], batches, temperature=t)
    ours = torch.cat([scores["0"].flatten(), scores["2"].flatten()]).double()
    torch.testing.assert_close(ours, -paper_score, rtol=1e-4, atol=1e-6 * float(paper_score.abs().max()))
    per_layer = -theta * torch.block_diag(h[:20, :20], h[20:, 20:]) @ g
    assert (ours + per_layer).abs().max() > 1e-2 * paper_score.abs().max()  # the cross-layer blocks matter here


def _without_running_stats(net):
    """A copy whose BNs always normalise with batch statistics and keep no buffers (the train-mode function)."""
    net = copy.deepcopy(net)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.track_running_stats, m.running_mean, m.running_var, m.num_batches_tracked = False, None, None, None
    return net


def test_grasp_on_a_resnet_matches_forward_over_reverse_hvp_and_the_bn_scale_invariance_law():
    """On resnet8 (train-mode BN, two batches, five scored layers across stages, a shortcut and the classifier):
    (1) w ⊙ H g equals w ⊙ jvp(∇L, g), a Hessian-vector product by forward-over-reverse differentiation
    (``torch.func``), independent of GraSP's double backward; (2) every conv followed by batch-statistics BN makes
    L invariant to its scale, so H_ll w_l = −g_l and H_kl w_l = 0, hence Σ_{j∈l} w_j (H g)_j = −‖g_l‖² per layer."""
    net = _resnet().double().train()
    layers = ["stem.conv", "stages.0.0.conv1", "stages.1.0.conv2", "stages.2.0.shortcut.conv", "head.fc"]
    gen = torch.Generator().manual_seed(2)
    batches = [
        (torch.randn(8, 3, 8, 8, generator=gen, dtype=torch.float64), torch.randint(0, 10, (8,), generator=gen))
        for _ in range(2)
    ]
    t = 4.0
    scores = grasp_scores(net, layers, batches, temperature=t)
    functional = _without_running_stats(net)
    weights = {f"{n}.weight": dict(net.named_modules())[n].weight.detach().clone() for n in layers}

    def loss(params):
        return sum(F.cross_entropy(functional_call(functional, params, (x,)) / t, y) for x, y in batches)

    g = {k: v.detach() for k, v in grad(loss)(weights).items()}
    _, hg = jvp(grad(loss), (weights,), (g,))
    for name in layers:
        w, gl = weights[f"{name}.weight"], g[f"{name}.weight"]
        reference = (w * hg[f"{name}.weight"]).detach()
        scale = float(reference.abs().max())
        assert scale > 0
        torch.testing.assert_close(scores[name].double(), reference, rtol=1e-4, atol=1e-5 * scale)
        if name != "head.fc":  # conv -> BN on batch statistics: scale-invariant
            law = -float((gl * gl).sum())
            assert abs(float(scores[name].double().sum()) - law) < 1e-3 * abs(law), name
