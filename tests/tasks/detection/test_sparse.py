import pytest
import torch
import torch.nn.functional as F

from geossm._compat import MissingDependencyError
from geossm.tasks.detection.sparse import (MERGE_PLAN, SparseVoxels, SubMConv3d, device_constant,
                                           expand_voxels, kernel_map,
                                           merge_voxels, neighbour_table, resolve_backend,
                                           spconv_available, unique_keys, unique_keys_together,
                                           voxel_keys, voxelize)

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
    # the convolution builds the neighbour table only (kernel_map is read from it on demand)
    table = sp.cache[("table", 3)]
    assert neighbour_table(sp) is table
    empty = SparseVoxels(torch.zeros(0, 5, dtype=torch.float64),
                         torch.zeros(0, 4, dtype=torch.long),
                         (4, 4, 4), 1)
    assert conv(empty).features.shape == (0, 4)


def _table_by_offset_loop(sp, k):
    """The neighbour table one offset at a time (the rulebook's definition, no vectorisation)."""
    keys = voxel_keys(sp.indices, sp.spatial_shape).tolist()
    row_of = {key: row for row, key in enumerate(keys)}
    v, r = len(keys), k // 2
    table = torch.full((v, k ** 3), v, dtype=torch.long)
    offsets = [(dz, dy, dx) for dz in range(-r, r + 1) for dy in range(-r, r + 1)
               for dx in range(-r, r + 1)]
    for row, (b, z, y, x) in enumerate(sp.indices.tolist()):
        for col, (dz, dy, dx) in enumerate(offsets):
            cell = (z + dz, y + dy, x + dx)
            if all(0 <= c < s for c, s in zip(cell, sp.spatial_shape)):
                key = voxel_keys(torch.tensor([[b, *cell]]), sp.spatial_shape).item()
                table[row, col] = row_of.get(key, v)
    return table


@pytest.mark.parametrize("k", [1, 3, 5])
def test_neighbour_table_and_kernel_map_match_the_offset_loop(k):
    sp = _random_voxels(n=120, shape=(3, 5, 4), batch=3)
    ref = _table_by_offset_loop(sp, k)
    assert torch.equal(neighbour_table(sp, k), ref)
    v = ref.shape[0]
    pairs = kernel_map(sp, k)
    assert len(pairs) == k ** 3
    for col, (out_rows, in_rows) in enumerate(pairs):
        expect = torch.nonzero(ref[:, col] < v).squeeze(1)
        assert torch.equal(out_rows, expect)
        assert torch.equal(in_rows, ref[expect, col])


def test_neighbour_table_of_no_voxels():
    empty = SparseVoxels(torch.zeros(0, 2), torch.zeros(0, 4, dtype=torch.long), (4, 4, 4), 1)
    assert neighbour_table(empty).shape == (0, 27)
    assert all(o.numel() == 0 and i.numel() == 0 for o, i in kernel_map(empty))


def _skip_without_spconv():
    if not spconv_available():
        reason = ("spconv is not importable (pip install 'geossm-lib[spconv]'); only the torch "
                  "path is tested")
        print(f"SKIP: {reason}")
        pytest.skip(reason)


def _run(conv, sp, backend, upstream):
    """Output, input-feature gradient and weight/bias gradients of ``conv`` on ``sp``."""
    conv.backend = backend
    conv.zero_grad(set_to_none=True)
    feats = sp.features.clone().requires_grad_(True)
    out = conv(SparseVoxels(feats, sp.indices, sp.spatial_shape, sp.batch_size)).features
    (out * upstream).sum().backward()
    bias_grad = None if conv.bias is None else conv.bias.grad.clone()
    return out.detach(), feats.grad, conv.weight.grad.clone(), bias_grad


#: (voxels drawn, spatial shape, batch, C_in, C_out, kernel, empty sample, dtype, bias)
SPCONV_CASES = [
    (300, (6, 9, 11), 2, 5, 7, 3, None, torch.float64, True),
    (500, (5, 13, 7), 4, 3, 8, 3, 2, torch.float64, False),      # sample 2 has no voxel
    (80, (3, 4, 17), 3, 6, 2, 5, None, torch.float64, True),
    (200, (7, 7, 7), 1, 4, 4, 1, None, torch.float64, True),
    (400, (9, 5, 6), 3, 16, 16, 3, 0, torch.float32, False),     # sample 0 has no voxel
]


@pytest.mark.parametrize("case", SPCONV_CASES, ids=lambda c: f"{c[1]}-b{c[2]}-k{c[5]}-{c[7]}")
@pytest.mark.parametrize("device", DEVICES)
def test_spconv_outputs_and_gradients_equal_the_torch_path(case, device):
    """The spconv backend (native algorithm on the CPU, spconv's default on CUDA) computes
    what the torch path does, forward and backward, through the one weight parameter."""
    _skip_without_spconv()
    n, shape, batch, cin, cout, k, empty, dtype, bias = case
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("spconv's CUDA kernels take fp32/fp16 features; fp64 cases run on the CPU")
    sp = _random_voxels(n, shape, batch, cin, seed=n)
    if empty is not None:
        keep = sp.indices[:, 0] != empty
        sp = SparseVoxels(sp.features[keep], sp.indices[keep], shape, batch)
        assert (sp.indices[:, 0] == empty).sum() == 0 and len(sp.indices)
    sp = SparseVoxels(sp.features.to(device, dtype), sp.indices.to(device), shape, batch)
    conv = SubMConv3d(cin, cout, k, bias=bias).to(device, dtype)
    if bias:
        with torch.no_grad():
            conv.bias.normal_()
    upstream = torch.randn(len(sp.indices), cout, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64).to(device, dtype)
    ref = _run(conv, sp, "torch", upstream)
    got = _run(conv, sp, "spconv", upstream)
    tol = {} if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-4)
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), got, ref):
        if b is None:
            assert a is None
            continue
        assert b.abs().max() > 0, name
        torch.testing.assert_close(a, b, **tol, msg=lambda m: f"{name}: {m}")


def test_spconv_rulebook_is_built_once_per_voxel_set(monkeypatch):
    """Stacked convolutions on the same voxels (``sp.replace``) share spconv's indice pairs,
    as spconv's ``indice_key`` does; a new voxel set builds its own."""
    _skip_without_spconv()
    from geossm.tasks.detection import sparse

    builds = []
    original = sparse._spconv_rulebook
    monkeypatch.setattr(sparse, "_spconv_rulebook",
                        lambda *a: builds.append(a[2]) or original(*a))
    sp = _random_voxels()
    first, second = SubMConv3d(5, 6, backend="spconv").double(), \
        SubMConv3d(6, 4, backend="spconv").double()
    second(first(sp))
    assert builds == [3]
    assert ("spconv_subm", 3, "Native", True) in sp.cache
    SubMConv3d(5, 6, kernel_size=5, backend="spconv").double()(sp)
    second(first(_random_voxels(seed=3)))
    assert builds == [3, 5, 3]


def test_spconv_training_step_updates_the_weight():
    """One optimizer step through the spconv backend moves the conv weight exactly as the
    same step through the torch path (the old backend copied the weight into a fresh spconv
    module under no_grad, so its weight never trained)."""
    _skip_without_spconv()
    sp = _random_voxels()
    weights = {}
    for backend in ("torch", "spconv"):
        torch.manual_seed(0)
        conv = SubMConv3d(5, 7, backend=backend).double()
        before = conv.weight.detach().clone()
        opt = torch.optim.SGD(conv.parameters(), lr=0.1)
        conv(sp).features.square().mean().backward()
        opt.step()
        assert not torch.equal(conv.weight.detach(), before)
        weights[backend] = conv.weight.detach()
    torch.testing.assert_close(weights["spconv"], weights["torch"])


def test_spconv_under_cuda_autocast_trains_close_to_fp32():
    """On CUDA under the trainer's bf16 autocast spconv computes in fp16 (its own cast): the
    gradients come back in fp32 and stay close to the fp32 torch path's."""
    _skip_without_spconv()
    if not torch.cuda.is_available():
        reason = "no CUDA device: spconv's autocast path runs on the GPU test run"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    sp = _random_voxels(n=2000, shape=(20, 30, 40), c=32, device="cuda")
    sp = sp.replace(sp.features.float())
    conv = SubMConv3d(32, 32).cuda()
    upstream = torch.randn(len(sp.indices), 32, device="cuda")
    ref = _run(conv, sp, "torch", upstream)
    conv.backend = "spconv"
    conv.zero_grad(set_to_none=True)
    feats = sp.features.clone().requires_grad_(True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = conv(sp.replace(feats)).features
    assert out.dtype == torch.float16
    (out.float() * upstream).sum().backward()
    assert feats.grad.dtype == torch.float32 and conv.weight.grad.dtype == torch.float32
    for got, want in ((out.float(), ref[0]), (feats.grad, ref[1]), (conv.weight.grad, ref[2])):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02 * float(want.abs().max()))


def test_spconv_backend_on_empty_voxels_and_a_cuda_only_algorithm():
    _skip_without_spconv()
    empty = SparseVoxels(torch.zeros(0, 5), torch.zeros(0, 4, dtype=torch.long), (4, 4, 4), 2)
    assert SubMConv3d(5, 3, backend="spconv")(empty).features.shape == (0, 3)
    sp = _random_voxels()
    with pytest.raises(ValueError, match="spconv_algo: 'mask_implicit_gemm' runs on CUDA only"):
        SubMConv3d(5, 3, backend="spconv", spconv_algo="mask_implicit_gemm")(
            sp.replace(sp.features.float()))


def test_backend_selection_and_missing_spconv(monkeypatch):
    from geossm.tasks.detection import sparse

    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("torch", torch.device("cuda")) == "torch"
    with pytest.raises(ValueError, match=r"backend: expected one of \('torch', 'spconv', 'auto'\)"):
        SubMConv3d(2, 2, backend="cuda")
    with pytest.raises(ValueError, match="spconv_algo: expected 'auto', 'native'"):
        SubMConv3d(2, 2, spconv_algo="implicit")
    monkeypatch.setattr(sparse, "spconv_available", lambda: False)
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
    with pytest.raises(MissingDependencyError, match=r"pip install 'geossm-lib\[spconv\]'"):
        SubMConv3d(2, 2, backend="spconv")
    assert SubMConv3d(2, 2, backend="auto").backend == "auto"
    monkeypatch.setattr(sparse, "spconv_available", lambda: True)
    assert resolve_backend("auto", torch.device("cuda")) == "spconv"
    assert resolve_backend("auto", torch.device("cpu")) == "torch"


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


def _voxelize_by_selection(points, batch, batch_size, voxel_size, pcr):
    """Voxelisation by its definition: the points inside, grouped by cell, averaged."""
    cells = {}
    for p, b in zip(points.tolist(), batch.tolist()):
        cell = [int(torch.floor(torch.tensor((p[i] - pcr[i]) / voxel_size[i]))) for i in range(3)]
        shape = [round((pcr[i + 3] - pcr[i]) / voxel_size[i]) for i in range(3)]
        if all(pcr[i] <= p[i] < pcr[i + 3] and 0 <= cell[i] < shape[i] for i in range(3)):
            cells.setdefault((b, cell[2], cell[1], cell[0]), []).append(p)
    keys = sorted(cells)
    return torch.tensor(keys), torch.tensor([list(map(sum, zip(*cells[k]))) for k in keys]) / \
        torch.tensor([[len(cells[k])] for k in keys])


def test_voxelize_matches_the_definition_with_points_outside_on_every_side():
    g = torch.Generator().manual_seed(3)
    pts = torch.rand(400, 4, generator=g, dtype=torch.float64) * 1.6 - 0.3   # ~half outside
    batch = torch.randint(0, 3, (400,), generator=g)
    pcr, vs = (0.0, 0.0, 0.0, 1.0, 1.0, 1.0), (0.25, 0.25, 0.5)
    sp, p2v = voxelize(pts, batch, 3, vs, pcr)
    indices, means = _voxelize_by_selection(pts, batch, 3, vs, pcr)
    assert torch.equal(sp.indices, indices)
    torch.testing.assert_close(sp.features, means.to(torch.float64))
    inside = p2v >= 0
    assert 0 < int(inside.sum()) < 400
    assert torch.equal(sp.indices[p2v[inside]][:, 0], batch[inside])
    # every point outside the range has -1, every point inside its cell
    lo, hi = torch.tensor(pcr[:3], dtype=pts.dtype), torch.tensor(pcr[3:], dtype=pts.dtype)
    assert torch.equal(inside, ((pts[:, :3] >= lo) & (pts[:, :3] < hi)).all(1))


def test_device_constants_are_made_once():
    a = device_constant([[0, 1], [2, 3]], torch.device("cpu"))
    assert a is device_constant(((0, 1), (2, 3)), "cpu") and a.dtype == torch.long
    assert device_constant([0.5], "cpu", torch.float32).dtype == torch.float32


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


@pytest.mark.parametrize("device", DEVICES)
def test_unique_keys_equal_torch_unique_with_per_sample_counts(device):
    g = torch.Generator().manual_seed(3)
    cells, batch = 50, 3
    keys = torch.randint(0, cells * batch, (400,), generator=g)
    keys[::7] = cells * batch + 5                       # sentinels past every cell: dropped
    keys[keys // cells == 1] = 0                        # sample 1 has no key of its own
    keys = keys.to(device)
    uniq, inverse, counts = unique_keys(keys, cells, batch)
    ref, ref_inverse = torch.unique(keys, return_inverse=True)
    u = int(counts.sum())
    assert counts.tolist() == [int(((ref // cells) == b).sum()) for b in range(batch)]
    assert counts[1] == 0 and u == ref.numel() - 1
    assert torch.equal(uniq, ref[:u]) and torch.equal(inverse, ref_inverse)
    assert int(inverse.max()) == u                      # the sentinels' dump row
    none, inv0, counts0 = unique_keys(keys[:0], cells, batch)
    assert none.numel() == inv0.numel() == 0 and counts0.tolist() == [0, 0, 0]
    # several sets in one read: of one length (stacked) and of different lengths
    for other in (keys.flip(0) // 2, keys[:150] // 3):
        together = unique_keys_together((keys, cells, batch), (other, 20, 4))
        for (u, i, c), (k, n, b) in zip(together, [(keys, cells, batch), (other, 20, 4)]):
            ref_u, ref_i = torch.unique(k, return_inverse=True)
            assert torch.equal(i, ref_i) and torch.equal(u, ref_u[:int(c.sum())])
            assert c.tolist() == [int(((ref_u // n) == s).sum()) for s in range(b)]


def test_voxelize_and_merge_know_their_voxels_per_sample():
    sp = _random_voxels(batch=3)
    coarse, _ = merge_voxels(sp, (2, 2, 2))
    assert coarse.sample_counts.tolist() == torch.bincount(coarse.indices[:, 0],
                                                           minlength=3).tolist()
    assert coarse.replace(coarse.features * 2).sample_counts is coarse.sample_counts
    assert sp.sample_counts is None
    pts = torch.tensor([[0.1, 0.1, 0.1, 1.0], [0.2, 0.1, 0.1, 1.0], [5.0, 0.1, 0.1, 1.0],
                        [0.1, 0.1, 0.1, 1.0]])
    vox, _ = voxelize(pts, torch.tensor([0, 0, 0, 2]), 3, (1, 1, 1), (0, 0, 0, 2, 2, 2))
    assert vox.sample_counts.tolist() == [1, 0, 1]      # the point at x = 5 is out of range


@pytest.mark.parametrize("stride", [(2, 2, 2), (1, 3, 2)])
def test_voxelize_works_out_its_first_merge_in_the_same_read(stride):
    g = torch.Generator().manual_seed(5)
    pts = torch.rand(400, 4, generator=g) * torch.tensor([9.0, 9.0, 4.0, 1.0]) - 0.5
    batch = torch.randint(0, 3, (400,), generator=g)
    batch[batch == 1] = 0                              # an empty sample
    args = (pts, batch, 3, (1.0, 1.0, 0.5), (0, 0, 0, 8, 8, 3))
    planned, p2v = voxelize(*args, then_merge=stride)
    plain, ref_p2v = voxelize(*args)
    assert torch.equal(p2v, ref_p2v) and torch.equal(planned.features, plain.features)
    assert MERGE_PLAN in planned.cache and MERGE_PLAN not in plain.cache
    coarse, inverse = merge_voxels(planned.replace(planned.features * 2), stride)
    ref, ref_inverse = merge_voxels(plain.replace(plain.features * 2), stride)
    assert torch.equal(coarse.indices, ref.indices) and torch.equal(inverse, ref_inverse)
    assert torch.equal(coarse.features, ref.features)
    assert coarse.sample_counts.tolist() == ref.sample_counts.tolist()
    assert ref.sample_counts[1] == 0
    other, _ = merge_voxels(planned, (1, 1, 1))         # another stride: merged as before
    assert torch.equal(other.indices, planned.indices)
