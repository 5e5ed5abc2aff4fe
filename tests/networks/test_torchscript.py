"""TorchScript: CarcinoNet and TransMIL compile with torch.jit.script and match eager mode at any input size.

The project's Nystrom attention is checked against the ``nystrom-attention`` package (the official TransMIL's
attention, installed with the dev extra) as the oracle: same state dict, same numbers.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from nystrom_attention import NystromAttention as ReferenceNystromAttention

from monai_disc.networks import carcinonet_toy, transmil_toy
from monai_disc.networks.nystrom import NystromAttention

torch.set_num_threads(1)


def _script(net: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch 2.x deprecates jit; MONAI's ckpt_export still uses it
        return torch.jit.script(net)


@pytest.mark.parametrize("n", [1, 5, 8, 9, 37])
def test_nystrom_attention_equals_the_reference_package_with_its_weights(n):
    torch.manual_seed(0)
    args = {"dim": 32, "dim_head": 8, "heads": 4, "num_landmarks": 8, "pinv_iterations": 6, "dropout": 0.1}
    reference = ReferenceNystromAttention(**args, residual=True, residual_conv_kernel=33).eval()
    own = NystromAttention(**args).eval()
    own.load_state_dict(reference.state_dict())  # same names: to_qkv, to_out.0, res_conv
    x = torch.randn(2, n, 32)
    with torch.no_grad():
        out, attn1, attn2_inv, attn3 = own.attention(x)
        ref_out, (ref1, ref2_inv, ref3) = reference(x, return_attn_matrices=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
    for mine, theirs in ((attn1, ref1), (attn2_inv, ref2_inv), (attn3, ref3)):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)


def test_scripted_transmil_matches_eager_mode_for_every_bag_size():
    torch.manual_seed(0)
    net = transmil_toy(16, dim=32, heads=4, landmarks=8).eval()
    scripted = _script(net)
    for n in (1, 2, 37, 200):  # a trace at one size would be wrong (or crash) at the others
        x = torch.randn(1, n, 16)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), net(x), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        logits, attention = scripted(torch.randn(1, 10, 16), True)
    assert logits.shape == (1, 4) and attention.shape == (1, 10)


def test_scripted_carcinonet_matches_eager_mode_for_any_tile_size():
    torch.manual_seed(0)
    net = carcinonet_toy().eval()
    scripted = _script(net)
    for shape in ((1, 3, 64, 64), (2, 3, 70, 45)):  # 70 x 45 is padded to the stride and cropped back
        x = torch.rand(*shape) * 2 - 1
        with torch.no_grad():
            out = scripted(x)
            torch.testing.assert_close(out, net(x), rtol=1e-5, atol=1e-5)
        assert out.shape == (shape[0], 4, *shape[2:])
