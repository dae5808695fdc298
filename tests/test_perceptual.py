"""Perceptual, texture and region-aware adversarial losses: the feature networks (VGG19's layout and key names,
random weights from a seed), the terms the paired trainer sums, and their params."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gan_enhance.config import Params, PerceptualParams, TextureMaskParams, TrainParams, load_params, parse_overrides
from gan_enhance.models.features import (
    VGG19_LAYOUT,
    FeatureNet,
    FeatureWeightsError,
    gram,
    layer_indices,
    random_features,
    vgg19_features,
)
from gan_enhance.tasks import build_task
from gan_enhance.training.terms import (
    AdversarialTerm,
    GeneratorStep,
    PerceptualTerm,
    TextureTerm,
    build_terms,
    texture_mask,
)

pytestmark = pytest.mark.numeric  # also run on a second CPU code path (make test-cpu-path)


def _torchvision_vgg19_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with torchvision's vgg19() key names and shapes (features and classifier), random values."""
    gen = torch.Generator().manual_seed(seed)
    state, channels, index = {}, 3, 0
    for item in VGG19_LAYOUT:
        if item == "M":
            index += 1
            continue
        state[f"features.{index}.weight"] = torch.randn(int(item), channels, 3, 3, generator=gen) * 0.05
        state[f"features.{index}.bias"] = torch.randn(int(item), generator=gen) * 0.05
        channels, index = int(item), index + 2
    for i, (out, inp) in zip((0, 3, 6), ((4096, 25088), (4096, 4096), (1000, 4096)), strict=True):
        state[f"classifier.{i}.weight"] = torch.zeros(out, inp)
        state[f"classifier.{i}.bias"] = torch.zeros(out)
    return state


def test_layer_names_follow_torchvision_numbering():
    names = layer_indices()
    # ESRGAN's perceptual layer, conv5_4 before its ReLU, is torchvision's vgg19().features[34]
    assert names["conv5_4"] == 34 and names["conv1_1"] == 0 and names["conv2_1"] == 5 and names["conv3_4"] == 16
    assert len(names) == 16
    net = FeatureNet(["conv2_2"])
    assert len(net.features) == 8  # up to conv2_2 (index 7), nothing after it is computed


def test_vgg19_loads_torchvision_keys_and_takes_features_before_the_relu(tmp_path: Path):
    state = _torchvision_vgg19_state()
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(state, path)
    net, sha256 = vgg19_features(["conv1_1", "conv1_2"], path)
    assert len(sha256) == 64
    images = torch.rand(2, 3, 16, 16)
    out = net(images)
    normalised = (images - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]
    ).view(1, 3, 1, 1)
    conv1_1 = F.conv2d(normalised, state["features.0.weight"], state["features.0.bias"], padding=1)
    conv1_2 = F.conv2d(conv1_1.relu(), state["features.2.weight"], state["features.2.bias"], padding=1)
    torch.testing.assert_close(out["conv1_1"], conv1_1)  # pre-activation: negative values kept
    torch.testing.assert_close(out["conv1_2"], conv1_2)
    assert (out["conv1_1"] < 0).any()
    assert not any(p.requires_grad for p in net.parameters())
    net.train()
    assert not net.training  # the trainer's train() never switches it


def test_vgg19_weights_missing_or_wrong_fail_naming_the_file(tmp_path: Path):
    missing = tmp_path / "nowhere" / "vgg19-dcbb9e9d.pth"
    with pytest.raises(FeatureWeightsError, match=r"vgg19-dcbb9e9d\.pth.*does not exist.*Copy the file there"):
        vgg19_features(["conv5_4"], missing)
    state = _torchvision_vgg19_state()
    state["features.34.weight"] = state["features.34.weight"][:, :256]
    wrong = tmp_path / "wrong.pth"
    torch.save(state, wrong)
    with pytest.raises(FeatureWeightsError, match=r"features\.34\.weight"):
        vgg19_features(["conv5_4"], wrong)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(path_bytes(tmp_path)[:1000])
    with pytest.raises(FeatureWeightsError, match="not a readable"):
        vgg19_features(["conv1_1"], truncated)


def path_bytes(tmp_path: Path) -> bytes:
    full = tmp_path / "full.pth"
    torch.save(_torchvision_vgg19_state(), full)
    return full.read_bytes()


def test_random_features_come_from_their_seed_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = random_features(["conv3_4"], 0.25, seed=7, init="kaiming_normal")
    assert torch.equal(torch.rand(1), before)  # the global RNG is untouched: training draws stay the same
    b = random_features(["conv3_4"], 0.25, seed=7, init="kaiming_normal")
    c = random_features(["conv3_4"], 0.25, seed=8, init="kaiming_normal")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(a.features[0].weight, c.features[0].weight)
    assert a.features[0].out_channels == 16 and a.features[-1].out_channels == 64  # a quarter of VGG19's widths


def test_gram_matrix_of_features():
    features = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]])  # 1 x 2 channels x 1 x 2
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]]) / 4
    torch.testing.assert_close(gram(features), expected)


def test_texture_mask_marks_textured_regions_only():
    target = torch.full((1, 3, 32, 32), 0.5)
    target[..., 16:] += 0.4 * torch.rand(1, 3, 32, 16, generator=torch.Generator().manual_seed(0))
    mask = texture_mask(target, TextureMaskParams(window=5, threshold=0.03))
    assert mask.shape == (1, 1, 32, 32)
    assert mask[..., :12].sum() == 0 and mask[..., 19:].mean() == 1.0


def _step(fake: torch.Tensor, target: torch.Tensor, verdicts=None) -> GeneratorStep:
    return GeneratorStep(
        fake, target, target, True, judge=lambda: verdicts, stable=lambda: target, mask_settings=TextureMaskParams()
    )


def test_perceptual_and_texture_terms_are_zero_on_the_target_and_pull_the_output_towards_it():
    params = PerceptualParams(network="random", layers={"conv1_2": 0.5, "conv2_2": 1.0}, texture_weight=1.0)
    net = random_features(list(params.layers), 0.25, seed=0, init="kaiming_normal")
    target = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    terms = [PerceptualTerm(1.0, net, params, {}), TextureTerm(1.0, net, params, {})]
    for term in terms:
        assert term.value(_step(target.clone(), target)) == 0
        fake = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(2))).requires_grad_()
        loss = term.value(_step(fake, target))
        (grad,) = torch.autograd.grad(loss, fake)
        assert loss > 0 and grad.abs().sum() > 0
        with torch.no_grad():
            assert term.value(_step(fake - 0.5 * grad / grad.abs().max() * 0.01, target)) < loss


def test_masked_adversarial_term_leaves_flat_targets_alone():
    flat = torch.full((2, 3, 32, 32), 0.4)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    verdicts = (logits, [], torch.zeros(2, 1, 8, 8), [])
    masked = AdversarialTerm(1.0, "ragan", torch.mean, masked=True)
    plain = AdversarialTerm(1.0, "ragan", torch.mean, masked=False)
    assert masked.value(_step(flat, flat, verdicts)) == 0
    assert plain.value(_step(flat, flat, verdicts)) > 0
    textured = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(masked.value(_step(textured, textured, verdicts)).detach()) == pytest.approx(
        float(plain.value(_step(textured, textured, verdicts)).detach()), rel=1e-6
    )  # all texture: the mask is 1 everywhere, the same loss as unmasked (one mean over the same values)


def test_terms_built_from_params_and_their_phases():
    tp = TrainParams(perceptual=PerceptualParams(network="random", texture_weight=0.1, phase="adversarial"))
    terms = {t.name: t for t in build_terms(tp, build_task(Params().task), torch.mean, torch.device("cpu"))}
    assert set(terms) == {"pixel", "perceptual", "texture", "adv", "fm"}
    assert terms["pixel"].active(False) and not terms["perceptual"].active(False) and terms["texture"].active(True)
    assert terms["perceptual"].settings()["seed"] == 0 and terms["perceptual"].settings()["network"] == "random"
    plain = {t.name for t in build_terms(TrainParams(), build_task(Params().task), torch.mean, torch.device("cpu"))}
    assert plain == {"pixel", "adv", "fm"}  # perceptual off by default


def test_perceptual_params_are_checked(tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text("{}")
    with pytest.raises(ValueError, match=r"train\.perceptual\.layers.*conv5_4.*conv6_1"):
        load_params(path, parse_overrides(["train.perceptual.layers={conv6_1: 1.0}"]))
    with pytest.raises(ValueError, match=r"train\.texture_mask\.window.*odd"):
        load_params(path, parse_overrides(["train.texture_mask.window=10"]))
    with pytest.raises(ValueError, match=r"train\.perceptual\.network"):
        load_params(path, parse_overrides(["train.perceptual.network=lpips"]))


def test_each_term_is_a_mean_over_samples_so_ddp_averaging_shards_gives_the_whole_batch():
    """DistributedDataParallel averages the ranks' gradients: that equals one process on the whole batch only when
    a term is a mean of per-sample values. The perceptual, texture and masked adversarial terms are: the batch's
    gradient equals the mean of its halves' to float32 round-off. (Trained under 2 processes, the weights drift
    further apart than with the pixel loss alone, 3.5e-5 against 3e-8 after 30 steps, as Adam turns round-off into
    steps where a gradient is near zero: hence this check here rather than a looser tolerance in test_distributed.)"""
    from gan_enhance.models.registry import build

    from .conftest import photo_crops

    target = torch.from_numpy(np.stack(photo_crops(4, size=32))).permute(0, 3, 1, 2).float() / 255
    inp = F.interpolate(target, scale_factor=0.5, mode="bicubic", antialias=True)
    torch.manual_seed(0)
    G = build("generator", "srvgg", scale=2, num_feat=8, num_conv=2)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(0.01 * torch.randn_like(p))
    params = PerceptualParams(network="random", layers={"conv1_2": 0.5, "conv2_2": 1.0})
    net = random_features(list(params.layers), 0.25, seed=0, init="kaiming_normal")
    D = build("discriminator", "patchgan", num_feat=8, num_layers=2).eval()  # spectral norm: no power step per call
    settings = TextureMaskParams(window=5, threshold=0.03)

    def judge(fake: torch.Tensor, real: torch.Tensor):
        return D(fake)[0], [], D(real)[0].detach(), []

    terms = [
        PerceptualTerm(1.0, net, params, {}),
        TextureTerm(1.0, net, params, {}),
        AdversarialTerm(1.0, "vanilla", torch.mean, masked=True),
    ]

    def gradients(term, rows: slice) -> list[torch.Tensor]:
        G.zero_grad()
        fake = G(inp[rows])
        step = GeneratorStep(
            fake, target[rows], inp[rows], True, judge=lambda: judge(fake, target[rows]), stable=None,
            mask_settings=settings,
        )  # fmt: skip
        term.value(step).backward()
        return [p.grad.clone() for p in G.parameters()]

    for term in terms:
        whole, first, second = (gradients(term, rows) for rows in (slice(0, 4), slice(0, 2), slice(2, 4)))
        for w, a, b in zip(whole, first, second, strict=True):
            assert torch.allclose(w, (a + b) / 2, rtol=1e-4, atol=1e-5 * float(w.abs().max())), term.name
