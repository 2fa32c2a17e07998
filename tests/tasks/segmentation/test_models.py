import pytest
import torch

from geossm.tasks.segmentation.models import (PCM_ORDERS, SIZES, PointCloudMambaCls,
                                              PointCloudMambaSeg, _example_inputs)


def small_seg(**kw):
    args = dict(in_channels=3, num_classes=4, dims=(8, 16), depths=(1, 1), strides=(2,),
                grid_size=0.1, d_state=4, num_prompts=1)
    args.update(kw)
    torch.manual_seed(0)
    return PointCloudMambaSeg(**args).eval()


def test_packing_equals_one_sample_at_a_time():
    """Whole scenes packed: each sample's output equals running it alone (no cross-talk)."""
    model = small_seg()
    coord, feat, cu = _example_inputs(3, lengths=(60, 17, 33))
    with torch.no_grad():
        packed = model(coord, feat, cu)
        for a, b in zip(cu[:-1].tolist(), cu[1:].tolist()):
            alone = model(coord[a:b], feat[a:b], torch.tensor([0, b - a], dtype=torch.int32))
            torch.testing.assert_close(packed[a:b], alone, atol=1e-4, rtol=1e-4)
    assert packed.shape == (110, 4)


@pytest.mark.parametrize("small_first", [True, False])
def test_a_sample_beside_a_larger_one_gets_its_logits_alone(small_first):
    """The grid depth is per sample: a small cloud packed beside a large one (a deeper grid)
    keeps its Hilbert orders and pooling, hence its logits, bit for bit."""
    torch.manual_seed(0)
    model = PointCloudMambaSeg(in_channels=3, num_classes=5, size="tiny", dims=[16, 16, 16],
                               depths=[0, 4, 4], strides=[8, 2], grid_size=0.02,
                               d_state=4).eval()
    assert "hilbert" in [model.encoder.orders[i] for i in model.encoder.block_orders[2]]
    g = torch.Generator().manual_seed(0)
    a = torch.rand(400, 3, generator=g) * 0.5
    b = torch.rand(400, 3, generator=g) * 8.0
    pair = (a, b) if small_first else (b, a)
    cu = torch.tensor([0, 400, 800], dtype=torch.int32)
    with torch.no_grad():
        alone = model(a, a, torch.tensor([0, 400], dtype=torch.int32))
        packed = model(torch.cat(pair), torch.cat(pair), cu)
    got = packed[:400] if small_first else packed[400:]
    torch.testing.assert_close(got, alone, rtol=0, atol=0)


@pytest.mark.parametrize("coord", [torch.zeros(50, 3), torch.tensor([[0.3, -1.0, 2.0]])])
def test_a_cloud_within_one_cell_is_predicted(coord):
    """A single point or all points in one voxel: every stage pools to that one cell."""
    model = PointCloudMambaSeg(in_channels=3, num_classes=5, size="tiny", dims=[16, 16, 16],
                               depths=[0, 2, 2], strides=[8, 2], grid_size=0.02, d_state=4,
                               k=4).eval()
    with torch.no_grad():
        out = model(coord, coord, torch.tensor([0, coord.shape[0]], dtype=torch.int32))
        both = model(torch.cat([coord, coord + 5]), torch.cat([coord, coord]),
                     torch.tensor([0, coord.shape[0], 2 * coord.shape[0]], dtype=torch.int32))
    assert out.shape == (coord.shape[0], 5) and torch.isfinite(out).all()
    torch.testing.assert_close(both[:coord.shape[0]], out, rtol=1e-5, atol=1e-5)


def test_orders_cycle_and_presets():
    model = PointCloudMambaSeg(size="tiny")
    enc = model.encoder
    flat = [o for stage in enc.block_orders for o in stage]
    assert flat == list(range(len(flat)))  # block j uses orders[j % 9]
    assert enc.orders == PCM_ORDERS and len(PCM_ORDERS) == 9
    base = PointCloudMambaSeg(size="base", num_classes=13)
    assert base.encoder.dims == SIZES["base"]["dims"]
    assert sum(p.numel() for p in base.parameters()) > 5 * sum(p.numel() for p in model.parameters())


def test_category_conditioning_and_classifier():
    model = small_seg(num_categories=3)
    coord, feat, cu = _example_inputs(3, lengths=(40, 25))
    out = model(coord, feat, cu, category=torch.tensor([0, 2]))
    assert out.shape == (65, 4)
    with pytest.raises(ValueError, match="category \\(B,\\) is required"):
        model(coord, feat, cu)
    with pytest.raises(ValueError, match="category must have one entry per sample \\(B=2\\), got 3"):
        model(coord, feat, cu, category=torch.tensor([0, 1, 2]))
    cls = PointCloudMambaCls(num_classes=5, dims=(8, 16), depths=(1, 1), strides=(2,),
                             grid_size=0.1, d_state=4)
    logits = cls(coord, feat, cu)
    assert logits.shape == (2, 5)
    logits.sum().backward()


def test_model_errors():
    coord, feat, cu = _example_inputs(3, lengths=(20,))
    model = small_seg()
    with pytest.raises(ValueError, match=r"feat must have shape \(N=20, in_channels=3\), got \(20, 2\)"):
        model(coord, feat[:, :2], cu)
    with pytest.raises(ValueError, match=r"coord must have shape \(N, 3\), got \(20, 2\)"):
        model(coord[:, :2], feat, cu)
    with pytest.raises(ValueError, match="cu_seqlens must start at 0 and end at N=20, got 0..19"):
        model(coord, feat, torch.tensor([0, 19]))
    with pytest.raises(ValueError, match="size must be one of \\['base', 'tiny'\\], got 'huge'"):
        PointCloudMambaSeg(size="huge")
    with pytest.raises(ValueError, match="strides must be powers of two >= 2, got \\(3,\\)"):
        small_seg(strides=(3,))
    with pytest.raises(ValueError, match="strides must have len\\(dims\\) - 1 = 1 entries"):
        small_seg(strides=(2, 2))
    with pytest.raises(ValueError, match="orders must be a non-empty list of names"):
        small_seg(orders=("spiral",))
    with pytest.raises(ValueError, match="dec_depths must have len\\(dims\\) - 1 = 1 entries"):
        small_seg(dec_depths=(1, 1))


def _loss_grads_and_saved_bytes(model, coord, feat, cu, label):
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = torch.nn.functional.cross_entropy(model(coord, feat, cu), label)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()], sum(saved.values())


def test_grad_checkpoint_same_loss_and_gradients_with_less_saved_memory():
    """model.grad_checkpoint: identical training step (drop-path and head dropout replayed),
    a fraction of the activations kept for backward."""
    coord, feat, cu = _example_inputs(3, lengths=(150, 90))
    label = torch.randint(0, 4, (240,), generator=torch.Generator().manual_seed(0))
    runs = []
    for ckpt in (False, True):
        model = small_seg(drop_path=0.3, dropout=0.2, dec_depths=(1,), grad_checkpoint=ckpt)
        model.encoder.embed.checkpoint_chunk = 100  # several chunks of the kNN embedding
        torch.manual_seed(3)
        runs.append(_loss_grads_and_saved_bytes(model.train(), coord, feat, cu, label))
    (loss0, grads0, bytes0), (loss1, grads1, bytes1) = runs
    torch.testing.assert_close(loss1, loss0)
    for g1, g0 in zip(grads1, grads0):
        torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-4)
    assert bytes1 * 4 < bytes0, (bytes1, bytes0)


def test_knn_embedding_recompute_same_step_keeps_no_neighbour_activations():
    """KNNEmbedding.recompute (default): the (N, k, dim) MLP activations are recomputed in the
    backward instead of kept; the training step is the same."""
    coord, feat, cu = _example_inputs(3, lengths=(150, 90))
    label = torch.randint(0, 4, (240,), generator=torch.Generator().manual_seed(0))
    runs = []
    for recompute in (False, True):
        model = small_seg(drop_path=0.3, dropout=0.2, dec_depths=(1,))
        model.encoder.embed.recompute = recompute
        model.encoder.embed.checkpoint_chunk = 100  # several chunks
        torch.manual_seed(3)
        runs.append(_loss_grads_and_saved_bytes(model.train(), coord, feat, cu, label))
    (loss0, grads0, bytes0), (loss1, grads1, bytes1) = runs
    torch.testing.assert_close(loss1, loss0, atol=0, rtol=0)
    for g1, g0 in zip(grads1, grads0):
        torch.testing.assert_close(g1, g0, atol=1e-6, rtol=1e-4)
    embed = model.encoder.embed
    # Kept without recomputation: at least the fc1, norm1, gelu and fc2 activations, 4 floats
    # of (N, k, dim) each.
    assert bytes0 - bytes1 >= 4 * 240 * embed.k * embed.fc1.out_features * 4, (bytes0, bytes1)


def test_training_gradients_are_bitwise_reproducible_on_several_threads():
    """The same step repeated on 4 CPU threads gives bitwise-identical gradients, whatever the
    threads' timing (more threads than cores on a small machine: the OS interleaves them, as on
    a busy one). The default job's model: 32 channels, a category embedding, T·C above torch's
    32768-element grain so the parallel CPU paths are taken. The per-sample embedding used to be
    gathered as ``embed(category)[batch]``, whose backward (an accumulating index_put) adds
    with CPU atomics: most repetitions differed in the last bits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        torch.manual_seed(0)
        model = PointCloudMambaSeg(in_channels=3, num_classes=4, dims=(32, 16), depths=(0, 1),
                                   strides=(4,), grid_size=0.05, d_state=4, k=4, num_prompts=1,
                                   num_categories=3, drop_path=0.0).train()
        coord, feat, cu = _example_inputs(3, lengths=(600, 500, 400))
        label = torch.randint(0, 4, (1500,), generator=torch.Generator().manual_seed(0))
        category = torch.tensor([0, 2, 1])

        def gradients():
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(coord, feat, cu, category), label)
            loss.backward()
            return [p.grad.clone() for p in model.parameters()]

        reference = gradients()
        for repetition in range(6):
            torch.randn(200, 200) @ torch.randn(200, 200)  # shifts the threads' relative timing
            for (name, _), got, want in zip(model.named_parameters(), gradients(), reference):
                assert torch.equal(got, want), f"{name} differs at repetition {repetition}"
    finally:
        torch.set_num_threads(threads)
