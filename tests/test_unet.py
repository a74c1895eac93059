"""The U-Net: shapes, time dependence, gradients, over-fitting, conditioning."""

import pytest
import torch

from nets.unet import UNet, UNetConfig, timestep_embedding


def small_config(**kw) -> UNetConfig:
    return UNetConfig(base_channels=16, channel_mults=(1, 2), attention_resolutions=(14,), **kw)


def test_default_unet_is_the_mnist_model():
    model = UNet()
    assert model.config == UNetConfig()
    n_params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < n_params < 10e6


def test_output_has_the_input_shape():
    model = UNet()
    x = torch.randn(3, 1, 28, 28)
    assert model(x, torch.tensor([0, 500, 999])).shape == x.shape


def test_output_depends_on_t():
    torch.manual_seed(0)
    model = UNet(small_config())
    for p in model.parameters():  # zero-initialised output layers would hide the dependence
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 1, 28, 28)
    a = model(x, torch.tensor([10, 10]))
    b = model(x, torch.tensor([900, 900]))
    assert (a - b).abs().max() > 1e-4


def test_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = UNet(small_config(num_classes=10))
    x, t, y = torch.randn(4, 1, 28, 28), torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 10, 3])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):  # zero-initialised output convs pass gradients on after two steps
        opt.zero_grad()
        (model(x, t, y) - x).pow(2).mean().backward()
        opt.step()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 7]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(4) / 4)
    assert torch.allclose(emb[1, :4], torch.cos(7 * freqs))


def test_unconditional_model_rejects_labels():
    with pytest.raises(ValueError, match="unconditional"):
        UNet(small_config())(torch.randn(1, 1, 28, 28), torch.tensor([0]), torch.tensor([3]))


@pytest.mark.parametrize("bad", [dict(base_channels=0), dict(channel_mults=()),
                                 dict(base_channels=12), dict(dropout=1.0), dict(image_size=27)])
def test_bad_config_raises_value_error(bad):
    with pytest.raises(ValueError):
        UNetConfig(**{**dict(base_channels=16), **bad})


def test_config_round_trips_through_a_dict():
    cfg = small_config(num_classes=10)
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({**cfg.to_dict(), "wings": 2})
