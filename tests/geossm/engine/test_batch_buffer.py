"""``BatchBuffer``: a batch crosses the loader's worker boundary as one buffer and comes back
bitwise, whatever it holds (dicts, PyG batches, objects with their own ``to``)."""

import pickle
from dataclasses import dataclass

import pytest
import torch
from torch.utils.data import DataLoader
from torch_geometric.data import Batch, Data

from geossm.engine.batch_buffer import ALIGN, BatchBuffer, BufferCollate


@dataclass
class Plan:
    """Stands in for a task's plan: tensors inside an object with its own ``to``."""
    order: torch.Tensor
    lengths: list[int]

    def to(self, device, non_blocking=False):
        return Plan(self.order.to(device, non_blocking=non_blocking), self.lengths)


def _nested() -> dict:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=g)
    return {"f32": base, "bf16": torch.randn(3, 7, generator=g).bfloat16(),
            "f16": torch.randn(5, generator=g).half(), "i64": torch.arange(9).view(3, 3),
            "i32": torch.arange(5, dtype=torch.int32), "u8": torch.arange(3, dtype=torch.uint8),
            "bool": torch.tensor([True, False, True]), "scalar": torch.tensor(2.5),
            "empty": torch.zeros(0, 4), "transposed": base.t(), "strided": base[::2, 1:],
            "conj": torch.complex(base[0], base[1]).conj(), "neg": torch.complex(
                base[2], base[3]).conj().imag,
            "list": [torch.ones(2), (torch.zeros(1, dtype=torch.long), 3)], "plan": Plan(
                torch.tensor([2, 0, 1]), [1, 2]), "text": "kept", "number": 7}


def _assert_same(a, b) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape
        assert not b.is_conj() and not b.is_neg()
        a = a.resolve_conj().resolve_neg().contiguous()  # the values, bit for bit
        assert torch.equal(a.view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    elif isinstance(a, Plan):
        _assert_same(a.order, b.order)
        assert a.lengths == b.lengths
    else:
        assert a == b


def test_every_dense_tensor_goes_into_one_aligned_buffer_and_comes_back_bitwise():
    batch = _nested()
    packed = BatchBuffer(batch)
    assert len(packed.layout) == 16  # every tensor once, the plan's too
    assert all(offset % ALIGN == 0 for offset, _, _ in packed.layout)
    # the pickle carries structure only: the 4,000 bytes of tensor data are in the buffer
    assert len(packed.payload) < 1500 and packed.buffer.dtype == torch.uint8
    out = packed.unpack()
    _assert_same(batch, out)
    assert out["plan"].order.data_ptr() >= packed.buffer.data_ptr()  # views of the buffer


def test_one_tensor_twice_stays_one_tensor_and_sparse_or_parameters_keep_their_pickling():
    shared = torch.arange(4.0)
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.tensor([1.0, 3.0]), (4,))
    parameter = torch.nn.Parameter(torch.ones(2))
    packed = BatchBuffer({"a": shared, "b": shared, "sparse": sparse, "p": parameter})
    out = packed.unpack()
    assert out["a"] is out["b"] and torch.equal(out["a"], shared)
    assert out["sparse"].is_sparse and torch.equal(out["sparse"].to_dense(), sparse.to_dense())
    assert isinstance(out["p"], torch.nn.Parameter) and torch.equal(out["p"], parameter)


def test_to_moves_each_object_its_own_way_and_the_batch_survives_pickling():
    packed = pickle.loads(pickle.dumps(BatchBuffer(_nested())))  # what a worker sends
    moved = packed.to("cpu", non_blocking=True)
    assert isinstance(moved["plan"], Plan) and moved["text"] == "kept"
    _assert_same(_nested(), moved)


def _graphs(n: int) -> list[Data]:
    g = torch.Generator().manual_seed(1)
    return [Data(x=torch.randn(k + 2, 3, generator=g),
                 edge_index=torch.randint(0, k + 2, (2, 2 * k + 1), generator=g),
                 y=torch.tensor([k % 2])) for k in range(n)]


def test_pyg_batches_from_two_workers_equal_the_unpacked_loader():
    graphs = _graphs(12)
    plain = list(DataLoader(graphs, batch_size=4, collate_fn=Batch.from_data_list))
    loader = DataLoader(graphs, batch_size=4, num_workers=2,
                        collate_fn=BufferCollate(Batch.from_data_list))
    packed = [b.to("cpu") for b in loader]
    assert len(packed) == len(plain) == 3
    for want, got in zip(plain, packed):
        assert isinstance(got, Batch) and got.num_graphs == want.num_graphs
        for key in ("x", "edge_index", "y", "batch", "ptr"):
            assert torch.equal(got[key], want[key]), key
        assert got.to_data_list()[1].x.shape == want.to_data_list()[1].x.shape


def test_pinning_pins_the_one_buffer():
    if not torch.cuda.is_available():
        pytest.skip("pinned memory needs a CUDA device")
    packed = BatchBuffer(_nested()).pin_memory()
    assert packed.buffer.is_pinned() and packed.unpack()["f32"].is_pinned()
