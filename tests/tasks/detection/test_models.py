import math
import pickle
import sys

import numpy as np
import pytest
import torch

from geossm.registry import MODELS
from geossm.tasks.detection.evaluation import kitti_eval
from geossm.tasks.detection.losses import centerpoint_loss, centerpoint_targets, gaussian_radius
from geossm.tasks.detection.models import (LION, LinearGroupLayer, decode_boxes,
                                           generate_merged_voxels, generate_voxels, run_level,
                                           _bev)
from geossm.tasks.detection.sparse import SparseVoxels, SubMConv3d, merge_voxels
from tests.sparse_samples import random_voxels


def test_lion_example_runs_and_backpropagates():
    kwargs, inputs = LION.example()
    model = LION(**kwargs)
    out = model(**inputs)
    grid = model.bev_grid()
    assert out["heatmap"].shape == (2, 2, grid["ny"], grid["nx"])
    assert out["reg"].shape == (2, 8, grid["ny"], grid["nx"])
    (out["heatmap"].mean() + out["reg"].mean()).backward()
    mamba = [p for n, p in model.named_parameters() if "A_log" in n]
    assert mamba and all(p.grad is not None for p in mamba)
    dets = model.decode(out)
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 7


def test_lion_forward_reads_the_host_once_per_voxel_set(monkeypatch):
    # the voxelisation and each generation (with its z merge): their sizes, their voxels per
    # sample and their first merge's in one read each; no torch.unique, no other read by the
    # model's code (the CPU kernels read their inputs: no device sync)
    kwargs, inputs = LION.example()
    model = LION(**{**kwargs, "num_blocks": 3, "group_sizes": (32, 16, 8), "z_stride": 2,
                    "generation_ratio": 0.3})
    reads = []
    cpu = torch.Tensor.cpu

    def counted(t, *args, **kw):
        caller = sys._getframe(1).f_code.co_filename
        if "kernels" not in caller:
            reads.append(f"{caller}:{sys._getframe(1).f_lineno}")
        return cpu(t, *args, **kw)

    def no_unique(*args, **kw):
        raise AssertionError("torch.unique in the LION forward")

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    monkeypatch.setattr(torch, "unique", no_unique)
    model(**inputs)["heatmap"].sum().backward()
    assert len(reads) == 3, reads


def test_lion_forward_with_a_layout_from_the_loader_reads_the_host_only_for_generation(
        monkeypatch):
    kwargs, inputs = LION.example()
    model = LION(**{**kwargs, "num_blocks": 2, "group_sizes": (32, 16)})
    torch.manual_seed(0)
    layout = model.voxel_planner()(inputs["points"], inputs["cu_seqlens"])
    assert layout.to("cpu").settings == layout.settings
    # both cross process boundaries (loader workers)
    assert pickle.loads(pickle.dumps(model.voxel_planner())) == model.voxel_planner()
    copied = pickle.loads(pickle.dumps(layout))
    assert torch.equal(copied.indices, layout.indices) and copied.merge[0] == layout.merge[0]
    ref = model(**inputs)
    reads = []
    cpu = torch.Tensor.cpu

    def counted(t, *args, **kw):
        if "kernels" not in sys._getframe(1).f_code.co_filename:
            reads.append(sys._getframe(1).f_lineno)
        return cpu(t, *args, **kw)

    monkeypatch.setattr(torch.Tensor, "cpu", counted)
    out = model(**inputs, voxels=layout)
    assert len(reads) == 1                      # the one generation (with its z merge)
    assert torch.equal(out["heatmap"], ref["heatmap"]) and torch.equal(out["reg"], ref["reg"])
    other = LION(**{**kwargs, "voxel_size": (0.25, 0.5, 0.5)})
    with pytest.raises(ValueError, match=r"voxels: a layout of .* build it with "
                                         r"model.voxel_planner\(\)"):
        other(**inputs, voxels=layout)
    with pytest.raises(ValueError, match="layout: built for 300 points in 2 samples, got 299"):
        model(inputs["points"][:299], torch.tensor([0, 150, 299], dtype=torch.int32),
              voxels=layout)


def test_lion_with_spconv_backend_equals_the_torch_backend():
    """``sparse_backend="spconv"`` (native algorithm on this CPU) gives the torch backend's
    outputs and gradients (fp32, the model's dtype) with the same weights; two blocks so that voxel generation and the
    z merge run between the convolutions."""
    from geossm.tasks.detection.sparse import spconv_available

    if not spconv_available():
        reason = "spconv is not importable (pip install 'geossm-lib[spconv]')"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    kwargs, inputs = LION.example()
    kwargs.update(num_blocks=2, group_sizes=(32, 16), generation_ratio=0.2)
    runs = {}
    for backend in ("torch", "spconv"):
        torch.manual_seed(0)
        model = LION(**kwargs, sparse_backend=backend)
        assert {m.backend for m in model.modules() if isinstance(m, SubMConv3d)} == {backend}
        out = model(**inputs)
        (out["heatmap"].square().mean() + out["reg"].square().mean()).backward()
        grads = {n: p.grad for n, p in model.named_parameters() if n.endswith("conv.weight")
                 or n == "stem.weight"}
        runs[backend] = out, grads
    (out_t, grads_t), (out_s, grads_s) = runs["torch"], runs["spconv"]
    for key in ("heatmap", "reg"):
        torch.testing.assert_close(out_s[key], out_t[key], rtol=1e-4, atol=1e-5)
    assert len(grads_t) == 3 and grads_t.keys() == grads_s.keys()
    for name in grads_t:
        assert grads_t[name].abs().max() > 0, name
        torch.testing.assert_close(grads_s[name], grads_t[name], rtol=1e-4,
                                   atol=1e-4 * float(grads_t[name].abs().max()),
                                   msg=lambda m: f"{name}: {m}")


def test_lion_sparse_backend_argument():
    from geossm._compat import MissingDependencyError
    from geossm.tasks.detection import sparse

    kwargs, inputs = LION.example()
    assert LION(**kwargs).stem.backend == "auto"
    with pytest.raises(ValueError, match="backend: expected one of"):
        LION(**kwargs, sparse_backend="cuda")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sparse, "spconv_available", lambda: False)
        with pytest.raises(MissingDependencyError, match="needs spconv"):
            LION(**kwargs, sparse_backend="spconv")


def test_group_layer_packs_without_padding():
    idx = torch.tensor([[0, 0, 0, x] for x in range(7)] + [[1, 0, 1, 1]])
    sp = SparseVoxels(torch.randn(8, 4), idx, (1, 4, 8), 2)
    layer = LinearGroupLayer(4, (4, 4, 1), 3, "x", False, d_state=4, expand=1)
    out = layer(sp)
    assert out.features.shape == (8, 4) and out.indices is sp.indices


def test_voxel_generation_and_bev():
    idx = torch.tensor([[0, 0, 2, 2], [0, 0, 0, 0]])
    sp = SparseVoxels(torch.tensor([[5.0, 1.0], [0.1, 0.0]]), idx, (1, 5, 5), 1)
    g = generate_voxels(sp, ratio=0.5)
    # the strongest voxel (2, 2) spreads to its four BEV neighbours, with its features
    assert g.indices.shape[0] == 6
    assert {tuple(r) for r in g.indices[2:].tolist()} == {(0, 0, 2, 1), (0, 0, 2, 3), (0, 0, 1, 2),
                                                          (0, 0, 3, 2)}
    assert (g.features[2:] == torch.tensor([5.0, 1.0])).all()
    two_heights = torch.tensor([[0, 0, 1, 2], [0, 1, 1, 2]])
    bev = _bev(SparseVoxels(torch.ones(2, 3), two_heights, (2, 3, 4), 1))
    assert bev.shape == (1, 3, 3, 4) and bev[0, :, 1, 2].tolist() == [2.0, 2.0, 2.0]


def _generate_sample_by_sample(sp, ratio, distance=1):
    """Voxel generation as defined, one sample at a time: topk of the max response, the four
    BEV neighbours in order, existing cells and repeats dropped (the first proposal wins),
    the new cells sorted by key."""
    score = sp.features.max(1).values
    z, y, x = sp.spatial_shape
    key = lambda b, k, j, i: ((b * z + k) * y + j) * x + i
    existing = {key(*r) for r in sp.indices.tolist()}
    proposals = []
    for b in range(sp.batch_size):
        rows = torch.nonzero(sp.indices[:, 0] == b).squeeze(1)
        k = math.ceil(ratio * rows.numel())
        for row in rows[torch.topk(score[rows], k).indices].tolist():
            bb, kk, jj, ii = sp.indices[row].tolist()
            for dj, di in ((0, distance), (0, -distance), (distance, 0), (-distance, 0)):
                if 0 <= jj + dj < y and 0 <= ii + di < x:
                    proposals.append((key(bb, kk, jj + dj, ii + di), (bb, kk, jj + dj, ii + di), row))
    first = {}
    for k, cell, row in proposals:
        if k not in existing and k not in first:
            first[k] = (cell, row)
    new = [first[k] for k in sorted(first)]
    cells = torch.tensor([c for c, _ in new], dtype=torch.long).reshape(-1, 4)
    rows = torch.tensor([r for _, r in new], dtype=torch.long)
    return (torch.cat([sp.indices, cells]), torch.cat([sp.features, sp.features[rows]]))


@pytest.mark.parametrize("ratio, distance", [(0.2, 1), (0.5, 2), (1.0, 1)])
def test_generation_of_the_whole_batch_equals_sample_by_sample(ratio, distance):
    g = torch.Generator().manual_seed(int(ratio * 10) + distance)
    idx = torch.stack([torch.randint(0, 3, (150,), generator=g), torch.randint(0, 2, (150,), generator=g),
                       torch.randint(0, 7, (150,), generator=g), torch.randint(0, 6, (150,), generator=g)], 1)
    idx = torch.unique(idx, dim=0)
    idx = idx[idx[:, 0] != 1]       # an empty sample in the middle
    sp = SparseVoxels(torch.randn(len(idx), 4, generator=g), idx, (2, 7, 6), 3)
    out = generate_voxels(sp, ratio, distance)
    indices, features = _generate_sample_by_sample(sp, ratio, distance)
    assert torch.equal(out.indices, indices)
    assert torch.equal(out.features, features)
    assert out.indices.shape[0] > sp.indices.shape[0]


@pytest.mark.parametrize("ratio, distance, stride, ties", [
    (0.2, 1, (2, 1, 1), False), (1.0, 1, (2, 1, 1), True), (0.5, 2, (2, 2, 2), True),
    (0.0, 1, (2, 1, 1), False)])
def test_generation_merged_in_one_step_equals_the_two_steps_bit_for_bit(ratio, distance, stride,
                                                                        ties):
    g = torch.Generator().manual_seed(7)
    idx = torch.stack([torch.randint(0, 3, (200,), generator=g), torch.randint(0, 4, (200,), generator=g),
                       torch.randint(0, 9, (200,), generator=g), torch.randint(0, 8, (200,), generator=g)], 1)
    idx = torch.unique(idx, dim=0)
    idx = idx[idx[:, 0] != 1]       # an empty sample in the middle
    feats = torch.randn(len(idx), 5, generator=g)
    if ties:                        # equal maxima in a merged cell share the gradient
        feats = feats.round()

    def run(fn):
        x = feats.clone().requires_grad_(True)
        sp = SparseVoxels(x * 1.0, idx, (4, 9, 8), 3)   # x * 1.0: a non-leaf, as in LION
        out = fn(sp)
        (out.features * torch.linspace(-1, 2, out.features.numel()).view_as(out.features)
         ).sum().backward()
        return out, x.grad

    merged, grad = run(lambda sp: generate_merged_voxels(sp, ratio, stride, distance))
    ref, ref_grad = run(lambda sp: merge_voxels(generate_voxels(sp, ratio, distance), stride)[0])
    assert torch.equal(merged.indices, ref.indices) and merged.spatial_shape == ref.spatial_shape
    assert torch.equal(merged.features, ref.features) and torch.equal(grad, ref_grad)
    assert merged.sample_counts.tolist() == torch.bincount(ref.indices[:, 0], minlength=3).tolist()
    if ratio:
        # with the next merge worked out: the same merge, with no read of its own
        ahead = generate_merged_voxels(SparseVoxels(feats, idx, (4, 9, 8), 3), ratio, stride,
                                       distance, then_merge=(1, 2, 2))
        assert torch.equal(ahead.features, ref.features.detach())
        coarse, inverse = merge_voxels(ahead, (1, 2, 2))
        ref_coarse, ref_inverse = merge_voxels(ref, (1, 2, 2))
        assert torch.equal(coarse.indices, ref_coarse.indices)
        assert torch.equal(inverse, ref_inverse)
        assert torch.equal(coarse.features, ref_coarse.features.detach())
        assert coarse.sample_counts.tolist() == ref_coarse.sample_counts.tolist()


def test_a_level_run_together_equals_its_layers_one_by_one():
    torch.manual_seed(0)
    layers = torch.nn.ModuleList([LinearGroupLayer(8, (4, 4, 2), 16, "x", False),
                                  LinearGroupLayer(8, (4, 4, 2), 16, "y", True)])
    sp = random_voxels(200, seed=1, batch_size=2)
    one_by_one = sp
    for layer in layers:
        one_by_one = layer(one_by_one)
    assert torch.equal(run_level(layers, sp).features, one_by_one.features)
    other = LinearGroupLayer(8, (4, 4, 2), 8, "y", True)
    with pytest.raises(ValueError, match="layers: expected one window_shape and group_size"):
        run_level([layers[0], other], sp)


def test_gaussian_radius_grows_with_size():
    assert gaussian_radius(6, 3) < gaussian_radius(12, 6)
    assert gaussian_radius(6, 3, 0.7) < gaussian_radius(6, 3, 0.1)


def test_targets_decode_and_evaluate_agree():
    """Perfect outputs built from the targets decode to the ground truth: AP 100."""
    grid = {"x0": 0.0, "y0": -20.0, "cx": 0.5, "cy": 0.5, "nx": 100, "ny": 80}
    boxes = torch.tensor([[10.3, -3.1, -0.9, 3.9, 1.6, 1.5, 0.4],
                          [30.7, 6.2, -1.0, 4.2, 1.7, 1.4, -2.9],
                          [20.2, 0.4, -0.8, 0.8, 0.6, 1.7, 1.2]])
    labels = torch.tensor([1, 1, 2])
    hm, reg, mask = centerpoint_targets(boxes, labels, torch.tensor([0, 3], dtype=torch.int32),
                                        grid, 2, 1)
    assert int(mask.sum()) == 3 and hm.max() == 1.0
    assert hm[0, 0, int((-3.1 + 20) / 0.5), int(10.3 / 0.5)] == 1.0
    logits = torch.logit(hm.clamp(1e-4, 1 - 1e-4))
    det = decode_boxes(logits, reg, grid, score_threshold=0.5)[0]
    order = np.argsort(det["boxes"][:, 0])
    np.testing.assert_allclose(det["boxes"][order], boxes[[0, 2, 1]].numpy(), atol=1e-4)
    assert det["labels"][order].tolist() == [1, 2, 1]
    loss = centerpoint_loss({"heatmap": logits, "reg": reg}, (hm, reg, mask))
    assert float(loss["reg_loss"]) == pytest.approx(0.0, abs=1e-6)
    names = np.array(["Car", "Car", "Pedestrian"])
    gt = [{"name": names, "boxes": boxes.numpy(), "bbox": np.tile([0, 0, 50, 60], (3, 1)),
           "truncated": np.zeros(3), "occluded": np.zeros(3, int)}]
    dt = [{"name": np.array(["Car", "Pedestrian"])[det["labels"] - 1], "boxes": det["boxes"],
           "score": det["scores"], "bbox": np.tile([0, 0, 50, 60], (len(det["boxes"]), 1))}]
    # 80 copies of the frame: the devkit's recall sampling needs >= 40 objects to reach 100
    res = kitti_eval(gt * 80, dt * 80, classes=("Car", "Pedestrian"))
    assert res["Car/3d_moderate_R40"] == pytest.approx(100.0)
    assert res["Pedestrian/bev_moderate_R40"] == pytest.approx(100.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="operator: expected one of"):
        LinearGroupLayer(4, (4, 4, 1), 3, "x", False, operator="rwkv")
    with pytest.raises(ValueError, match="group_sizes: expected 2 sizes"):
        LION(num_blocks=2, group_sizes=(64,))


def test_heading_loss_accepts_either_direction():
    """A box turned by a half turn is the same box: regressing (sin, cos) of either direction
    costs nothing; a quarter turn does."""
    grid = {"x0": 0.0, "y0": -10.0, "cx": 0.5, "cy": 0.5, "nx": 40, "ny": 40}
    boxes = torch.tensor([[10.3, -3.1, -0.9, 3.9, 1.6, 1.5, 0.4]])
    hm, reg, mask = centerpoint_targets(boxes, torch.tensor([1]),
                                        torch.tensor([0, 1], dtype=torch.int32), grid, 1, 1)
    logits = torch.logit(hm.clamp(1e-4, 1 - 1e-4))
    for turn, expected in ((math.pi, 0.0), (math.pi / 2, None)):
        turned = reg.clone()
        iy, ix = torch.nonzero(mask[0])[0].tolist()
        turned[0, 6, iy, ix] = math.sin(0.4 + turn)
        turned[0, 7, iy, ix] = math.cos(0.4 + turn)
        loss = float(centerpoint_loss({"heatmap": logits, "reg": turned}, (hm, reg, mask))["reg_loss"])
        if expected is None:
            assert loss > 0.5
        else:
            assert loss == pytest.approx(expected, abs=1e-6)


def test_neighbour_cells_regress_the_same_box():
    """With ``reg_neighbours=1`` the 3x3 cells around a centre hold offsets from themselves:
    decoding any of them gives the object's centre; a cell between two objects keeps the
    nearer one."""
    grid = {"x0": 0.0, "y0": -10.0, "cx": 0.5, "cy": 0.5, "nx": 40, "ny": 40}
    boxes = torch.tensor([[10.3, -3.1, -0.9, 3.9, 1.6, 1.5, 0.4],
                          [11.1, -3.1, -0.9, 3.9, 1.6, 1.5, 0.4]])
    cu = torch.tensor([0, 2], dtype=torch.int32)
    _, reg0, mask0 = centerpoint_targets(boxes[:1], torch.tensor([1]), torch.tensor([0, 1]),
                                         grid, 1, 1)
    _, reg, mask = centerpoint_targets(boxes, torch.tensor([1, 1]), cu, grid, 1, 1,
                                       reg_neighbours=1)
    assert int(mask0.sum()) == 1 and int(mask.sum()) == 15   # two 3x3 squares sharing 3 cells
    iy, ix = torch.nonzero(mask[0], as_tuple=True)
    x = (ix.float() + reg[0, 0, iy, ix]) * 0.5
    y = (iy.float() + reg[0, 1, iy, ix]) * 0.5 - 10.0
    centre = np.where(x.numpy() < 10.7, 10.3, 11.1)
    np.testing.assert_allclose(x.numpy(), centre, atol=1e-5)
    np.testing.assert_allclose(y.numpy(), -3.1, atol=1e-5)
    # the shared column 21 (cell centre 10.75 m) is nearer the second object
    shared = (21 + reg[0, 0, iy[ix == 21], 21]) * 0.5
    assert len(shared) == 3 and torch.allclose(shared, torch.tensor(11.1))


def test_box_decoder_from_config_matches_the_model_without_building_it():
    from pathlib import Path

    from geossm.config import load_config
    from geossm.tasks.detection.models import BoxDecoder, bev_grid

    configs = Path(__file__).resolve().parents[3] / "configs" / "detection"
    for name in ("synthetic_lion.yaml", "kitti_lion.yaml"):
        cfg = load_config(configs / name, ["model.dim=8", "model.bev_channels=8"])
        decoder = BoxDecoder.from_config(cfg.model)
        model = MODELS.build(dict(cfg.model))
        assert decoder.grid == model.bev_grid() == model.decoder.grid
        assert vars(decoder) == vars(model.decoder)
    # Keys the config leaves out take LION's own defaults.
    kwargs, inputs = LION.example()
    decoder = BoxDecoder.from_config({"name": "LION", **kwargs})
    model = LION(**kwargs).eval()
    assert vars(decoder) == vars(model.decoder) and decoder.pre_nms == 200
    assert bev_grid(kwargs["point_cloud_range"], kwargs["voxel_size"]) == model.bev_grid()
    with torch.no_grad():
        out = model(**inputs)
    for a, b in zip(decoder(out), model.decode(out)):
        for key in ("boxes", "scores", "labels"):
            np.testing.assert_array_equal(a[key], b[key])


def test_box_decoder_names_a_setting_the_model_class_has_no_default_for(monkeypatch):
    from geossm.registry import MODELS
    from geossm.tasks.detection.models import BoxDecoder

    class NoRangeDetector(torch.nn.Module):
        def __init__(self, point_cloud_range, voxel_size=(0.5, 0.5, 0.5)):
            super().__init__()

    monkeypatch.setattr(MODELS, "get", {"NoRangeDetector": NoRangeDetector}.__getitem__)
    with pytest.raises(ValueError, match="model.point_cloud_range: NoRangeDetector has no "
                                         "default for it"):
        BoxDecoder.from_config({"name": "NoRangeDetector"})
