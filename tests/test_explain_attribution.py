import pytest
import torch
from torch import nn

from ml_backend.explain.attribution import METHODS, explain_images, explain_tokens
from ml_backend.models.cnn import ImageCNN
from ml_backend.models.text import TextCNN

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # captum's DeepLift hook notice


class QuadrantNet(nn.Module):
    """Logit 0 sees only the top-left quadrant, logit 1 only the bottom-right one."""

    def __init__(self, height: int, width: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.abs_()
            self.conv.bias.zero_()
        self.cam_layer = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]))
        region = torch.zeros(1, 4, height, width)
        region[:, :2, : height // 2, : width // 2] = 1
        region[:, 2:, height // 2 :, width // 2 :] = 1
        self.register_buffer("region", region)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.cam_layer(self.conv(x) * self.region)).flatten(1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("training", [True, False])
def test_image_methods_shape_sign_and_mode(method, training):
    torch.manual_seed(0)
    model = ImageCNN(n_classes=3, image_size=24, width=8).train(training)
    x = torch.rand(2, 3, 24, 40)  # not square: catches swapped H/W
    rel = explain_images(model, x, torch.tensor([0, 2]), method, n_steps=4)
    assert rel.shape == (2, 24, 40)
    assert torch.isfinite(rel).all() and (rel >= 0).all() and rel.sum() > 0
    assert not rel.requires_grad
    assert model.training is training


@pytest.mark.parametrize("method", METHODS)
def test_image_mass_follows_the_target_quadrant(method):
    h, w = 16, 24
    model = QuadrantNet(h, w)
    x = torch.rand(2, 3, h, w) + 0.1
    rel = explain_images(model, x, torch.tensor([0, 1]), method, n_steps=8)
    top_left = rel[0, : h // 2, : w // 2].sum() / rel[0].sum()
    bottom_right = rel[1, h // 2 :, w // 2 :].sum() / rel[1].sum()
    # The 3x3 convolution lets a one-pixel rim outside the quadrant matter, nothing more.
    assert top_left > 0.8, top_left
    assert bottom_right > 0.8, bottom_right


def test_gradcam_is_the_relud_cam_layer_map_upsampled_bilinearly():
    torch.manual_seed(1)
    model = ImageCNN(n_classes=2, width=8).eval()
    x = torch.rand(1, 3, 32, 32)
    seen = {}
    hook = model.cam_layer.register_forward_hook(lambda m, i, out: seen.setdefault("a", out))
    logit = model(x)[0, 1]
    hook.remove()
    (grad,) = torch.autograd.grad(logit, seen["a"])
    cam = torch.relu((grad.mean(dim=(2, 3), keepdim=True) * seen["a"]).sum(dim=1, keepdim=True))
    expected = nn.functional.interpolate(cam, size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    rel = explain_images(model, x, torch.tensor([1]))
    assert cam.shape[-1] == 4 and cam.sum() > 0  # three 2x pools: 32 -> 4
    assert torch.allclose(rel, expected.detach(), atol=1e-7)


def test_mixed_modes_are_restored_module_by_module():
    model = ImageCNN(n_classes=2, width=8).eval()
    dropout = model.classifier[0].train()  # as MC-dropout sampling leaves it
    explain_images(model, torch.rand(1, 3, 16, 16), torch.tensor([0]), "saliency")
    assert dropout.training and not model.training and not model.classifier[3].training


def test_works_under_no_grad():
    model = ImageCNN(n_classes=2, width=8)
    with torch.no_grad():
        rel = explain_images(model, torch.rand(1, 3, 16, 16), torch.tensor([0]), "saliency")
    assert rel.sum() > 0


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="integrated_gradients"):
        explain_images(ImageCNN(2, width=8), torch.rand(1, 3, 16, 16), torch.tensor([0]), "lime")
    with pytest.raises(ValueError, match="gradcam"):
        explain_tokens(TextCNN(2, n_buckets=50), torch.ones(1, 4, dtype=torch.long), torch.tensor([0]), "shap")


DRIVER, POSITION, LENGTH, PADDED = 7, 4, 10, 16


@pytest.fixture
def text_model_and_ids():
    torch.manual_seed(0)
    model = TextCNN(n_classes=2, n_buckets=100, embed_dim=8, channels=8)
    with torch.no_grad():
        model.embedding.weight[DRIVER] *= 20  # this token dominates every max-pooled channel
    ids = torch.randint(8, 100, (2, PADDED))
    ids[:, POSITION] = DRIVER
    ids[:, LENGTH:] = 0
    return model, ids


@pytest.mark.parametrize("method", METHODS)
def test_token_relevance(method, text_model_and_ids):
    model, ids = text_model_and_ids
    model.train()
    rel = explain_tokens(model, ids, torch.tensor([0, 1]), method)
    assert rel.shape == (2, PADDED)
    assert torch.isfinite(rel).all() and (rel >= 0).all()
    assert (rel[:, LENGTH:] == 0).all()
    assert model.training
    top = rel.argmax(dim=1)
    if method == "saliency":
        # gradients ignore the input's size: only the receptive field of the driver stands out
        assert ((top - POSITION).abs() <= 1).all(), top
    else:
        assert (top == POSITION).all(), rel


def test_text_gradcam_falls_back_to_input_x_gradient(text_model_and_ids):
    model, ids = text_model_and_ids
    target = torch.tensor([1, 0])
    assert torch.allclose(explain_tokens(model, ids, target, "gradcam"),
                          explain_tokens(model, ids, target, "input_x_gradient"))


def test_predict_with_gradcam_equals_captum_in_one_pass():
    from ml_backend.explain.attribution import predict_with_gradcam
    from ml_backend.models.cnn import CNNKind, ImageCNN

    torch.manual_seed(0)
    model = ImageCNN(3, image_size=32).eval()
    x = torch.rand(5, 3, 32, 32)
    calls = []
    handle = model.body[0].register_forward_hook(lambda *a: calls.append(1))
    probs, cam = predict_with_gradcam(model, x)
    handle.remove()
    assert len(calls) == 1  # one forward pass serves the label and the explanation
    assert torch.allclose(probs, torch.softmax(model(x), dim=1), atol=1e-6)
    reference = explain_images(model, x, probs.argmax(1), "gradcam")
    assert torch.allclose(cam, reference, atol=1e-6)
    assert not model.training
    # what serving runs: the CNN kind fuses its evidence (Grad-CAM read on a finer map, see
    # tests/test_evidence_resolution.py) into one pass the same way (no map is empty here)
    assert (cam.flatten(1).sum(1) > 0).all()
    kind = CNNKind(model)
    calls.clear()
    handle = model.body[0].register_forward_hook(lambda *a: calls.append(1))
    served_probs, served = kind.predict_and_explain(x, "gradcam")
    handle.remove()
    assert len(calls) == 1
    assert torch.allclose(served_probs, probs, atol=1e-6) and (served.flatten(1).sum(1) > 0).all()
    assert torch.allclose(kind.relevance(x, probs.argmax(1), "gradcam"), served, atol=1e-6)
