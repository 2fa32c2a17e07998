import pytest
import torch
import torch.nn.functional as F

from geossm.tasks.detection.sparse import (SparseVoxels, SubMConv3d, expand_voxels, merge_voxels,
                                           spconv_available, voxelize)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _random_voxels(n=300, shape=(6, 9, 11), batch=2, c=5, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randint(0, batch, (n,), generator=g)] +
                      [torch.randint(0, s, (n,), generator=g) for s in shape], 1)
    idx = torch.unique(idx, dim=0)
    feats = torch.randn(len(idx), c, generator=g, dtype=torch.float64)
    return SparseVoxels(feats.to(device), idx.to(device), shape, batch)


def _dense(sp):
    b = sp.batch_size
    z, y, x = sp.spatial_shape
    d = torch.zeros(b, sp.features.shape[1], z, y, x, dtype=sp.features.dtype,
                    device=sp.features.device)
    i = sp.indices
    d[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]] = sp.features
    return d


@pytest.mark.parametrize("device", DEVICES)
def test_submanifold_conv_equals_dense_conv_at_active_sites(device):
    sp = _random_voxels(device=device)
    conv = SubMConv3d(5, 7).double().to(device)
    with torch.no_grad():
        conv.bias.normal_()
    out = conv(sp).features
    k = conv.weight.view(3, 3, 3, 5, 7).permute(4, 3, 0, 1, 2)  # (C_out, C_in, kz, ky, kx)
    ref = F.conv3d(_dense(sp), k, conv.bias, padding=1)
    i = sp.indices
    torch.testing.assert_close(out, ref[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]])
    # gradients (gather-GEMM with mirrored offsets) equal the dense convolution's
    feats = sp.features.clone().requires_grad_(True)
    up = torch.randn_like(out)
    (conv(sp.replace(feats)).features * up).sum().backward()
    dense = _dense(sp).requires_grad_(True)
    w = k.detach().clone().requires_grad_(True)
    ref = F.conv3d(dense, w, conv.bias.detach(), padding=1)[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]]
    (ref * up).sum().backward()
    torch.testing.assert_close(feats.grad, dense.grad[i[:, 0], :, i[:, 1], i[:, 2], i[:, 3]])
    torch.testing.assert_close(conv.weight.grad.view(3, 3, 3, 5, 7).permute(4, 3, 0, 1, 2), w.grad)


def test_kernel_map_is_cached_and_empty_input():
    sp = _random_voxels(n=50)
    conv = SubMConv3d(5, 4).double()
    conv(sp)
    assert ("subm", 3) in sp.cache
    empty = SparseVoxels(torch.zeros(0, 5, dtype=torch.float64),
                         torch.zeros(0, 4, dtype=torch.long),
                         (4, 4, 4), 1)
    assert conv(empty).features.shape == (0, 4)


def test_spconv_agrees_with_torch_path():
    if not spconv_available():
        reason = "spconv is not installed (pip install spconv-cu120); torch path only"
        print(f"SKIP spconv agreement: {reason}")
        pytest.skip(reason)
    if not torch.cuda.is_available():
        pytest.skip("spconv's submanifold convolution needs a CUDA device here")
    sp = _random_voxels(device="cuda")
    sp = sp.replace(sp.features.float())
    conv = SubMConv3d(5, 7).cuda()
    ref = conv(sp).features
    conv.backend = "spconv"
    torch.testing.assert_close(conv(sp).features, ref, atol=1e-4, rtol=1e-4)


def test_voxelize_means_and_drops_out_of_range():
    pts = torch.tensor([[0.05, 0.05, 0.05, 1.0], [0.15, 0.05, 0.05, 3.0], [0.05, 0.05, 0.05, 5.0],
                        [5.0, 0.0, 0.0, 1.0]])
    batch = torch.tensor([0, 0, 1, 0])
    sp, p2v = voxelize(pts, batch, 2, (0.1, 0.1, 0.1), (0, 0, 0, 1, 1, 1))
    assert sp.spatial_shape == (10, 10, 10)
    assert sp.indices.tolist() == [[0, 0, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]]
    torch.testing.assert_close(sp.features[:, 3], torch.tensor([1.0, 3.0, 5.0]))
    assert p2v.tolist() == [0, 1, 2, -1]
    with pytest.raises(ValueError, match=r"points: expected shape \(N, >=3\)"):
        voxelize(pts[:, :2], batch, 2, (0.1,) * 3, (0, 0, 0, 1, 1, 1))


def test_merge_and_expand():
    idx = torch.tensor([[0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 1], [0, 1, 2, 3], [1, 0, 0, 0]])
    f = torch.tensor([[1.0], [4.0], [2.0], [3.0], [9.0]])
    sp = SparseVoxels(f, idx, (2, 4, 4), 2)
    coarse, inv = merge_voxels(sp, (2, 2, 2))
    assert coarse.spatial_shape == (1, 2, 2)
    assert coarse.indices.tolist() == [[0, 0, 0, 0], [0, 0, 1, 1], [1, 0, 0, 0]]
    assert coarse.features[:, 0].tolist() == [4.0, 3.0, 9.0]
    assert inv.tolist() == [0, 0, 0, 1, 2]
    mean, _ = merge_voxels(sp, (2, 2, 2), reduce="mean")
    torch.testing.assert_close(mean.features[:, 0], torch.tensor([7 / 3, 3.0, 9.0]))
    up = expand_voxels(coarse, sp, inv)
    assert up.features[:, 0].tolist() == [4.0, 4.0, 4.0, 3.0, 9.0]
    with pytest.raises(ValueError, match="stride: expected 3 positive ints"):
        merge_voxels(sp, (0, 1, 1))
    with pytest.raises(ValueError, match="reduce: expected 'max' or 'mean'"):
        merge_voxels(sp, (1, 1, 1), reduce="sum")


def test_conv_bad_arguments():
    with pytest.raises(ValueError, match="kernel_size: expected an odd positive int"):
        SubMConv3d(2, 2, kernel_size=2)
    with pytest.raises(ValueError, match=r"features: expected shape \(V, 3\)"):
        SubMConv3d(3, 2)(_random_voxels(c=5))


@pytest.mark.parametrize("device", DEVICES)
def test_conv_under_bf16_autocast_trains(device):
    """Mixed precision (the trainer's bf16 autocast): the GEMMs run in bf16 and the backward
    pass works (it met a bf16 gradient with fp32 columns before), the gradients come back in
    the parameters' and inputs' fp32, close to the fp32 ones."""
    sp = _random_voxels(device=device)
    sp = sp.replace(sp.features.float())
    conv = SubMConv3d(5, 7).to(device)
    feats = sp.features.clone().requires_grad_(True)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = conv(sp.replace(feats)).features
    out.float().square().sum().backward()
    assert feats.grad.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    grad_bf16 = conv.weight.grad.clone()
    conv.weight.grad = None
    conv(sp).features.square().sum().backward()
    torch.testing.assert_close(grad_bf16, conv.weight.grad, rtol=0.05, atol=0.05 * float(
        conv.weight.grad.abs().max()))
