"""The CNN's served evidence resolves regions of the size annotators mark (benchmarks/bench_evidence.py)."""
import pytest
import torch
import torch.nn.functional as F

from ml_backend.explain.attribution import explain_images, predict_with_evidence
from ml_backend.explain.quality import irrelevant_mass
from ml_backend.models.cnn import CNNKind, ImageCNN

SIDE, PATCH = 28, 4
CORNERS = ((0, 0), (0, SIDE - PATCH), (SIDE - PATCH, 0), (SIDE - PATCH, SIDE - PATCH))


def _images(n: int, bar_class: torch.Tensor, patch_class: torch.Tensor | None, gen: torch.Generator
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Noisy 28x28 images with a 12-px bar in the middle (class 0 horizontal, 1 vertical) and, unless
    ``patch_class`` is None, a 4x4 patch in a random corner (class 0 dim, 1 bright); and the patches."""
    x = 0.15 * torch.rand(n, 1, SIDE, SIDE, generator=gen)
    mask = torch.zeros(n, SIDE, SIDE, dtype=torch.bool)
    for i in range(n):
        if bar_class[i] == 0:
            x[i, 0, 13:15, 8:20] = 1.0
        else:
            x[i, 0, 8:20, 13:15] = 1.0
        if patch_class is not None:
            r, c = CORNERS[int(torch.randint(0, 4, (1,), generator=gen))]
            x[i, 0, r:r + PATCH, c:c + PATCH] = 1.0 if patch_class[i] == 1 else 0.45
            mask[i, r:r + PATCH, c:c + PATCH] = True
    return x.expand(-1, 3, -1, -1).contiguous(), mask


def _train(x: torch.Tensor, y: torch.Tensor, seed: int, epochs: int = 6) -> CNNKind:
    torch.manual_seed(seed)
    net = ImageCNN(2, image_size=SIDE, width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            F.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return CNNKind(net.eval())


@pytest.mark.parametrize("seed", [0, 1])
def test_served_evidence_finds_a_small_patch_only_in_the_model_that_uses_it(seed):
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    n = 384
    y = torch.randint(0, 2, (n,), generator=gen)
    # (a) the patch decides the class, the bar is noise; (b) the bar decides, no patch at all
    x_patch, _ = _images(n, torch.randint(0, 2, (n,), generator=gen), y, gen)
    x_bar, _ = _images(n, y, None, gen)
    uses_patch, ignores_patch = _train(x_patch, y, seed), _train(x_bar, y, seed)
    # the same test images for both: a bar and a patch of independent classes
    x_test, mask = _images(200, torch.randint(0, 2, (200,), generator=gen),
                           torch.randint(0, 2, (200,), generator=gen), gen)
    area = mask.float().mean().item()  # 16 / 784 ~ 0.02
    mass_a = irrelevant_mass(uses_patch.predict_and_explain(x_test, "gradcam")[1], mask)
    mass_b = irrelevant_mass(ignores_patch.predict_and_explain(x_test, "gradcam")[1], mask)
    # measured ~0.2 and ~0.001; Grad-CAM at the last block (3x3 map) gives ~0.027 and ~0.018
    assert mass_a > 5 * area, (mass_a, area)
    assert mass_b < 0.1 * mass_a, (mass_a, mass_b)


def _calls(model: ImageCNN) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    calls: list[int] = []
    return calls, model.body[0].register_forward_hook(lambda *a: calls.append(1))


@pytest.mark.parametrize("side,block", [(28, None), (48, 2), (64, 3), (128, 4)])
def test_served_evidence_is_one_pass_on_a_grid_of_at_least_16_cells(side, block):
    torch.manual_seed(0)
    model = ImageCNN(3, image_size=side, width=8).eval()
    layer, cells = model.evidence_grid((side, side))
    assert layer is (None if block is None else model.cam_layers[block - 1])
    assert cells >= 16 and (block is None or cells < 32)
    kind = CNNKind(model)
    x = torch.rand(4, 3, side, side)
    calls, handle = _calls(model)
    probs, served = kind.predict_and_explain(x, "gradcam")
    handle.remove()
    assert len(calls) == 1  # one forward pass serves the label and the evidence
    assert torch.allclose(probs, torch.softmax(model(x), dim=1), atol=1e-6)
    assert served.shape == (4, side, side) and (served >= 0).all() and (served.flatten(1).sum(1) > 0).all()
    assert not served.requires_grad and not model.training
    assert torch.allclose(kind.relevance(x, probs.argmax(1), "gradcam"), served, atol=1e-6)


def test_evidence_at_the_last_block_without_smoothing_is_gradcam():
    torch.manual_seed(0)
    model = ImageCNN(3, image_size=32).eval()
    x = torch.rand(5, 3, 32, 32)
    probs, evidence = predict_with_evidence(model, x, model.cam_layer)
    reference = explain_images(model, x, probs.argmax(1), "gradcam")
    assert torch.allclose(evidence, reference, atol=1e-6)
    # another class, on request
    target = (probs.argmax(1) + 1) % 3
    _, other = predict_with_evidence(model, x, model.cam_layer, target=target)
    assert torch.allclose(other, explain_images(model, x, target, "gradcam"), atol=1e-6)


def test_smoothing_and_power_keep_the_order_of_a_smooth_map():
    torch.manual_seed(0)
    model = ImageCNN(3, image_size=28).eval()
    x = torch.rand(3, 3, 28, 28)
    _, smooth = predict_with_evidence(model, x, sigma=1.5)
    _, squared = predict_with_evidence(model, x, sigma=1.5, power=2.0)
    peak = smooth.flatten(1).amax(1)[:, None, None]
    assert torch.allclose(squared, (smooth / peak) ** 2, atol=1e-6)


def test_an_empty_map_falls_back_to_saliency():
    torch.manual_seed(0)
    kind = CNNKind(ImageCNN(3, image_size=28).eval())
    with torch.no_grad():
        kind.network.body[1].bias.fill_(0.5)  # block 1 active on black: a gradient flows back to it
    x = torch.zeros(2, 3, 28, 28)  # input x gradient is zero everywhere on a black image
    _, bare = predict_with_evidence(kind.network, x, sigma=1.5, power=2.0)
    assert (bare == 0).all()
    _, served = kind.predict_and_explain(x, "gradcam")
    assert (served.flatten(1).sum(1) > 0).all()


def test_frozen_weights_still_get_evidence():
    torch.manual_seed(0)
    model = ImageCNN(3, image_size=64, width=8).eval().requires_grad_(False)
    _, served = CNNKind(model).predict_and_explain(torch.rand(2, 3, 64, 64), "gradcam")
    assert (served.flatten(1).sum(1) > 0).all()


def test_checkpoints_of_existing_networks_still_load():
    model = ImageCNN(4, image_size=64)
    keys = set(model.state_dict())
    assert all(k.startswith(("body.", "classifier.")) for k in keys)  # cam_layers adds no submodule
    assert len(keys) == 4 * 6 + 4  # per block: conv weight; bn weight, bias, mean, var, batches; head
    ImageCNN(4, image_size=64).load_state_dict(model.state_dict())
