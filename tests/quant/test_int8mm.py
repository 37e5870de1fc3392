"""The int8-GEMM frozen linear: error within the bound its quantization steps allow, forward and backward."""

from __future__ import annotations

import pytest
import torch

from lorakit.adapters import LoraConfig, add_adapter
from lorakit.quant.int8mm import Int8MMLinear
from lorakit.runtime.int8_kernel import OUTLIER_SHARE, int8_matmul
from lorakit.quant.linear import Int8Linear
from lorakit.runtime import int8_kernel
from lorakit.runtime.int8_kernel import WEIGHT_LEVELS

pytestmark = pytest.mark.skipif(not int8_kernel.available(), reason="this PyTorch has no CPU int8 kernel")


def _bound(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Largest |int8_matmul(x) - x W^T| the quantization steps allow, per output element (M, out).

    W in the kernel: half a step of its 7-bit row scale (absmax / WEIGHT_LEVELS). x: the kernel
    rounds each row (scaled to absmax 1 after the outlier channels are taken out) to 8 bits over at
    most [-absmax, absmax], a step of 2/255 of that absmax, so half a step is absmax / 255. Outlier
    channels are exact in x and carry only the stored 8-bit W's error (smaller).
    """
    dw = w.abs().amax(dim=1) / WEIGHT_LEVELS / 2  # (out,)
    rest = x.clone()
    rest[:, x.abs().amax(dim=0).topk(max(1, x.shape[1] // OUTLIER_SHARE)).indices] = 0
    dx = rest.abs().amax(dim=1) / 255  # (M,)
    k = x.shape[1]
    return (x.abs().sum(1, keepdim=True) * dw + dx[:, None] * w.abs().sum(1) + k * dx[:, None] * dw) * 1.001 + 1e-6


def _data(m: int, k: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, :3] *= 30  # outlier channels, as after a transformer's norms
    x[m // 2] *= 50  # and an outlier token
    return x, torch.randn(n, k, generator=g) * 0.05


@pytest.mark.parametrize("shape", [(64, 128, 96), (33, 200, 17), (1, 64, 64)])
def test_forward_error_is_within_the_quantization_bound(shape):
    x, w = _data(*shape, seed=0)
    layer = Int8MMLinear.from_weight(w)
    err = (layer(x) - x @ w.T).abs()
    assert (err <= _bound(x, w)).all()


def test_input_gradient_is_within_the_quantization_bound_and_w_gets_none():
    x, w = _data(48, 96, 160, seed=1)
    layer = Int8MMLinear.from_weight(w)
    x.requires_grad_(True)
    dy = torch.randn(48, 160, generator=torch.Generator().manual_seed(2))
    layer(x).backward(dy)
    exact = dy @ w
    assert (x.grad - exact).abs().le(_bound(dy, w.T.contiguous())).all()
    assert not any(p.requires_grad for p in layer.parameters())


def test_outlier_channels_are_what_keeps_the_error_small():
    """Without the fp32 outlier channels, the error bound itself is dominated by them: the bound
    with them taken out is far tighter than the one int8 rows scaled by the outliers would get."""
    x, w = _data(64, 256, 64, seed=3)
    layer = Int8MMLinear.from_weight(w)
    err = (layer(x) - x @ w.T).abs().mean()
    whole_row_step = (x.abs().amax(dim=1, keepdim=True) / 127 * w.abs().sum(1)).mean()
    assert err < whole_row_step / 4


def test_it_stores_what_int8_weight_only_stores():
    _, w = _data(4, 64, 32, seed=4)
    a, b = Int8MMLinear.from_weight(w), Int8Linear.from_weight(w)
    assert torch.equal(a.dequantize(), b.dequantize())
    assert set(a.state_dict()) == set(b.state_dict())


def test_a_lora_layer_on_it_with_b_zero_gives_the_base_and_trains():
    torch.manual_seed(0)
    _, w = _data(1, 64, 48, seed=5)
    model = torch.nn.Sequential(Int8MMLinear.from_weight(w, torch.randn(48)))
    x = torch.randn(10, 64)
    base = model(x)
    add_adapter(model, LoraConfig(r=4, alpha=8, target_modules=["0"]))
    assert torch.equal(model(x), base)
    model(x).pow(2).sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_int8_matmul_takes_non_contiguous_input():
    x, w = _data(32, 64, 40, seed=6)
    layer = Int8MMLinear.from_weight(w)
    xt = x.T.contiguous().T  # same values, column-major
    assert torch.equal(int8_matmul(xt, layer._packed, layer._columns), int8_matmul(x, layer._packed, layer._columns))
