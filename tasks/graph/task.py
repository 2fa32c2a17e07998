"""Graph tasks: node classification (one graph, masks), graph classification, and several
targets per graph (``GraphPropertyTask``: multi-label or regression, as the dataset declares).

Batches are PyG ``Batch`` objects (``x``, ``edge_index``, ``edge_attr``, ``batch``, ``y``, and
``mask`` for node tasks, ``pe`` when ``data.pe`` is set). ``data.split`` selects which fixed
split (heterophilous graphs, ``0..9``) or cross-validation fold (TU, ``0..9``) a run uses; the
training part of it trains, ``eval.split`` / ``eval.test_split`` (``val`` / ``test``) evaluate::

    geossm train configs/graph/tolokers_gmn.yaml data.split=3

For node tasks an epoch is one full-graph step (transductive); evaluation runs the whole graph
and scores the masked nodes. Config keys read here besides the standard ones: ``model.*``
(``GraphMambaNetwork``), ``data.*`` (the dataset's keyword arguments; ``data.split`` as above),
``loss.input_l2`` (node tasks: coupled L2 ``input_l2 / 2 · ||W_in||²`` on the input projection
while training, default 0; ``losses.WithInputL2``).

One config serves a whole family of datasets (``data.name=CiteSeer`` with the Cora config):
``model.in_channels``, ``model.num_classes`` and ``model.edge_dim`` set to ``auto`` are read
from the training dataset (``num_features``, ``num_classes``, ``num_edge_features``; no edge
features gives ``edge_dim=None``), ``eval.metric: null`` selects checkpoints by the
dataset's published metric (``dataset.metric``: ROC-AUC for the binary heterophilous graphs,
AP for Peptides-func, MAE for Peptides-struct, accuracy otherwise) and ``eval.mode: null`` in
that metric's direction (``metrics.selection_mode``: min for MAE). The resolved values are
written back into the config, so the run's ``config.yaml`` holds the numbers. Any set of the
TU collection is read by its own name from its files (``datasets.dataset_class``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch_geometric.data import Batch, Data

from geossm.cache import main_process_first
from geossm.config import to_container
from geossm.engine import distributed as dist
from geossm.engine.cuda_graph import cuda_graph_wanted
from geossm.engine.inputs import check_field
from geossm.engine.logging import get_logger
from geossm.engine.metrics import MetricCollection
from geossm.engine.task import Task
from geossm.registry import DATASETS, TASKS

from .datasets import dataset_class
from .losses import WithInputL2
from .metrics import Accuracy, AveragePrecision, MeanAbsoluteError, RocAuc, selection_mode
from .static_batch import (StaticBatch, check_flat_planner, is_static_batch, padded_plan,
                           plan_fields)
from .transforms import AddPositionalEncodings, normalize_rows

__all__ = ["NodeClassificationTask", "GraphClassificationTask", "GraphPropertyTask",
           "MultiLabelGraphTask"]

#: One-graph batches whose plan's adjacencies ``collate`` keeps (train, val and test graphs).
STATIC_CACHE_SIZE = 4

#: ``model.*`` keys that ``auto`` fills from the training dataset, and the attribute read.
AUTO_MODEL_KEYS = {"in_channels": "num_features", "num_classes": "num_classes",
                   "edge_dim": "num_edge_features"}


def graph_sizes(dataset: Sequence[Data]) -> tuple[list[int], list[int]]:
    """The node and edge counts of every graph of ``dataset`` (``train.static_batch: auto``)."""
    nodes, edges = [], []
    for graph in dataset:
        nodes.append(int(graph.num_nodes))
        edges.append(int(graph.edge_index.shape[1]))
    return nodes, edges


def split_spec(split: str, default_index: Any) -> tuple[str, int]:
    """The trainer's split name -> ``(part, split_index)``.

    The trainer asks for ``str(data.split)`` to train and for ``eval.split`` / ``eval.test_split``
    to evaluate; ``data.split`` is a split / fold number here, so a number means "the train part
    of that split" and ``"val"`` / ``"test"`` take the number from ``data.split``.
    """
    def as_index(v: Any) -> int:
        if isinstance(v, int) and not isinstance(v, bool):
            return v
        if isinstance(v, str) and v.isdigit():
            return int(v)
        if v in (None, "train"):
            return 0
        raise ValueError(f"data.split: expected a split / fold number (0, 1, ...), got {v!r}")

    if isinstance(split, str) and split.isdigit():
        return "train", int(split)
    if split in ("train", "val", "test"):
        return split, as_index(default_index)
    raise ValueError(f"split: expected 'train', 'val', 'test' or a split number, got {split!r}")


def _expected_layout(dataset: type) -> str | None:
    """What ``data.root`` must hold for ``dataset`` (a class of ``datasets``), for the error
    of a run whose root lacks it; None for datasets without files."""
    family, name = getattr(dataset, "family", ""), getattr(dataset, "name", "")
    if family == "Planetoid":
        return (f"{name}/raw/ind.{name.lower()}.{{{','.join(dataset.FILES)}}} (Planetoid's "
                "layout)")
    if family == "heterophilous":
        if name.endswith("_filtered"):
            return f"{name}.npz (keys node_features, node_labels, edges, *_masks)"
        return f"{name}/raw/{name}.npz (PyG's HeterophilousGraphDataset layout)"
    if family == "TU":
        return (f"{name}/raw/{name}_A.txt, {name}_graph_indicator.txt, "
                f"{name}_graph_labels.txt, ... (the TU collection's text files)")
    if family == "peptides":
        return f"{dataset.CSV} and {dataset.SPLITS_FILE} (LRGB's {dataset.TITLE} layout)"
    return None


class _GraphTask(Task):
    #: Selection metric without ``eval.metric`` or a dataset metric; the mode always follows the
    #: metric (``metrics.selection_mode``) unless ``eval.mode`` names one.
    best_metric = "acc"
    #: Keys of the config's ``loss`` mapping this task reads.
    loss_keys: tuple[str, ...] = ()
    #: Whether ``train.static_batch`` (padded training batches) fits the task's loss.
    static_batches = False

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        #: Datasets built ahead of the trainer (``build_model``'s ``auto`` keys), by split.
        self._dataset_cache: dict[str, torch.utils.data.Dataset] = {}
        #: What ``collate`` precomputes for the built model (``plan.GraphPlanner``), or None.
        self.planner = None
        #: ``(edge_index, static parts)`` of recent one-graph batches (``_static_parts``).
        self._static_cache: dict[tuple, tuple] = {}
        #: ``train.static_batch``: training batches padded to one layout (``static_batch``).
        self.static_batch: StaticBatch | None = None

    def build_model(self) -> torch.nn.Module:
        """``MODELS[model.name](**model)`` after the ``auto`` keys are read from the training
        dataset; the widths and a null ``eval.metric`` / ``eval.mode`` (``selection_metric``)
        are written into the config, so the run's ``config.yaml`` records them (see the module
        docstring)."""
        model = self.cfg.model
        auto = [k for k in AUTO_MODEL_KEYS if model.get(k) == "auto"]
        if auto:
            dataset = self._training_dataset()
            for key in auto:
                value = getattr(dataset, AUTO_MODEL_KEYS[key], None)
                if key != "edge_dim" and not value:
                    raise ValueError(f"model.{key}=auto: {type(dataset).__name__} does not say "
                                     f"its {AUTO_MODEL_KEYS[key]}; set model.{key}")
                model[key] = int(value) if value else None
        if not (self.cfg.eval.get("metric") and self.cfg.eval.get("mode")):
            # recorded for the run's config.yaml: what selects best.pt, and in which direction
            self.cfg.eval.metric, self.cfg.eval.mode = self.selection_metric()
        built = super().build_model()
        planner = getattr(built, "planner", None)
        self.planner = planner() if callable(planner) else None
        self._static_cache = {}
        self.static_batch = self._static_batch()
        return built

    def _static_batch(self) -> StaticBatch | None:
        """``train.static_batch`` checked against the task and the model: several targets per
        graph (``GraphPropertyTask``) and a model whose plan fits the padded mapping (the GNN+
        baselines; a Graph Mamba planning its global order only, ``check_flat_planner``).
        ``auto`` pads only what a CUDA graph will replay (``train.cuda_graph`` on for this run,
        see ``cuda_graph_wanted``) and only where the task and the model take padded batches: off
        otherwise (CPU, DDP, token plans), with the reason logged, so configs can keep it on
        for their GPU runs; an explicit layout that does not fit raises."""
        spec = to_container(self.cfg.train.get("static_batch"))
        if spec is None:
            return None
        unfit = self._unpaddable()
        if spec != "auto":
            if unfit is not None:
                raise ValueError(f"train.static_batch: {unfit}")
            return StaticBatch.from_config(spec, int(self.cfg.train.batch_size))
        device = dist.resolve_device(self.cfg.get("device"))
        # the task may be built before torchrun's process group starts: its environment says
        distributed = dist.launched_distributed() or dist.get_world_size() > 1
        if unfit is None and not cuda_graph_wanted(self.cfg.train.get("cuda_graph", False),
                                                   device, distributed):
            unfit = "the step is not replayed as a CUDA graph (train.cuda_graph)"
        if unfit is not None:
            get_logger().info("train.static_batch: auto -> off: %s", unfit)
            return None
        nodes, edges = graph_sizes(self._training_dataset())
        static = StaticBatch.fitted(nodes, edges, int(self.cfg.train.batch_size),
                                    int(self.cfg.seed), int(self.cfg.train.epochs))
        get_logger().info("train.static_batch: auto -> {nodes: %d, edges: %d} (every batch of "
                          "%d epochs)", static.nodes, static.edges, int(self.cfg.train.epochs))
        return static

    def _unpaddable(self) -> str | None:
        """Why this task and model cannot take padded batches, or None when they can."""
        if not self.static_batches:
            return (f"{type(self).__name__} does not take padded batches (GraphPropertyTask "
                    "does); set train.static_batch=null")
        if self.planner is not None:
            try:
                check_flat_planner(self.planner)
            except ValueError as err:
                return str(err).removeprefix("train.static_batch: ")
        return None

    def selection_metric(self) -> tuple[str, str]:
        """``eval.metric`` when set, else the training dataset's published ``metric`` (ROC-AUC
        for the binary heterophilous graphs, accuracy otherwise), else ``best_metric``;
        ``eval.mode`` when set, else the metric's direction
        (``metrics.selection_mode``: min for MAE and losses)."""
        metric = self.cfg.eval.get("metric") or \
            str(getattr(self._training_dataset(), "metric", self.best_metric))
        return str(metric), selection_mode(metric, self.cfg.eval.get("mode"))

    def _training_dataset(self) -> torch.utils.data.Dataset:
        """The training dataset, kept for the trainer's first ``build_dataset`` call (built
        once: Planetoid / TU processing takes seconds). Under DDP rank 0 builds it first (it
        writes the PyG cache) while the others wait (``main_process_first``): every rank gets
        here from ``build_model`` or ``selection_metric`` alike."""
        split = str(self.cfg.data.split)
        if split not in self._dataset_cache:
            with main_process_first():
                self._dataset_cache[split] = self.build_dataset(split)
        return self._dataset_cache[split]

    def build_dataset(self, split: str) -> torch.utils.data.Dataset:
        """``DATASETS[data.name](split=part, split_index=K, **other data keys)``."""
        cached = self._dataset_cache.pop(str(split), None)
        if cached is not None:
            return cached
        data = dict(to_container(self.cfg.data))
        if not data.get("name"):
            raise ValueError("config key 'data.name' is not set (the dataset class name)")
        part, index = split_spec(split, data.get("split"))
        data["split"], data["split_index"] = part, index
        dataset = dataset_class(data["name"], data.get("root"))  # a TU set by its name too
        try:
            return DATASETS.build(data)
        except FileNotFoundError as err:
            layout = _expected_layout(dataset)
            if layout is None:
                raise
            raise FileNotFoundError(f"{data['name']}: {err}; set data.root=PATH to the folder "
                                    f"holding {layout}") from err

    def collate(self, samples: Sequence[Data]) -> Batch:
        """PyG ``Batch.from_data_list`` (graphs concatenated, ``batch (N,)`` added), and
        ``batch.plan`` when the built model has a ``planner`` (``GraphMambaNetwork``): the
        batch's tokens, orders and adjacencies, built here, in the loader's workers
        (``plan.GraphPlan``). Evaluation plans for samples of the ``val`` / ``test`` splits
        (``SplitSamples``, from the datasets' ``__getitems__``), training plans otherwise."""
        if not samples:
            raise ValueError("collate: expected at least one graph, got an empty list")
        batch = Batch.from_data_list(list(samples))
        training = getattr(samples, "split", "train") in ("train", None)
        if training and self.static_batch is not None:
            padded = self.static_batch.pad(batch)
            if is_static_batch(padded):  # planned on the padded graph (its order as fields)
                if self._plans():
                    padded.update(plan_fields(self.planner, padded))
                return padded
        if self.planner is not None:
            batch.plan = self.planner(batch.edge_index, int(batch.num_nodes), batch.batch,
                                      int(batch.num_graphs), training,
                                      self._static_parts(samples))
        return batch

    def _plans(self) -> bool:
        """Whether the built model plans its batches beyond the graph count (a Graph Mamba;
        the GNN+ baselines' default planner plans nothing a padded batch needs)."""
        return self.planner is not None and self.planner != type(self.planner)()

    def _static_parts(self, samples: Sequence[Data]) -> tuple | None:
        """The plan's deterministic part of a one-graph batch, computed once per graph (node
        tasks step on the same graph every epoch); None for other batches (built with the
        plan)."""
        if len(samples) != 1 or self.planner is None:
            return None
        edge_index = samples[0].edge_index
        key = (id(edge_index), edge_index._version, int(samples[0].num_nodes))
        cached = self._static_cache.get(key)
        if cached is None or cached[0] is not edge_index:
            if len(self._static_cache) >= STATIC_CACHE_SIZE:  # the oldest graph goes
                self._static_cache.pop(next(iter(self._static_cache)))
            cached = (edge_index, self.planner.static_parts(edge_index, key[2]))
            self._static_cache[key] = cached
        return cached[1]

    def num_samples(self, batch: Batch) -> int:
        return int(batch["graphs"]) if is_static_batch(batch) else int(batch.num_graphs)

    def loss_options(self) -> dict[str, Any]:
        """The config's ``loss`` mapping; keys other than ``loss_keys`` and a
        ``label_smoothing`` outside [0, 1) raise ``ValueError``."""
        if "input_l2" in self.cfg:  # a silently ignored penalty would change results
            raise ValueError("input_l2: the key moved to loss.input_l2")
        options = dict(to_container(self.cfg.get("loss")) or {})
        unknown = set(options) - set(self.loss_keys)
        if unknown:
            raise ValueError(f"loss: unknown keys {sorted(unknown)} for {type(self).__name__} "
                             f"(known: {', '.join(self.loss_keys) or 'none'})")
        smoothing = options.get("label_smoothing", 0.0)
        if (isinstance(smoothing, bool) or not isinstance(smoothing, (int, float))
                or not 0 <= smoothing < 1):
            raise ValueError(f"loss.label_smoothing: expected a number in [0, 1), got "
                             f"{smoothing!r}")
        return options

    @functools.cached_property
    def label_smoothing(self) -> float:
        """``loss.label_smoothing`` (tasks that list it in ``loss_keys``; default 0): the
        cross-entropy's target is ``(1 - ε)·one_hot + ε / C``, in training and evaluation
        alike (as ``torch.nn.functional.cross_entropy`` defines it). Read once: ``loss`` runs
        every step."""
        return float(self.loss_options().get("label_smoothing", 0.0))

    def build_loss(self, model: torch.nn.Module) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
        """``self.loss`` (after checking the ``loss`` keys and values)."""
        self.loss_options()
        return self.loss

    def forward(self, model: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The model on the batch's tensors (and its ``plan``, when ``collate`` built one; a
        padded static batch with its node mask and graph count)."""
        if is_static_batch(batch):
            extra = {"plan": padded_plan(self.planner, batch)} if self._plans() else {}
            return model(batch["x"], batch["edge_index"], edge_attr=batch.get("edge_attr"),
                         batch=batch["batch"], pe=batch.get("pe"), node_mask=batch["node_mask"],
                         num_graphs=batch["num_graphs"], **extra)
        plan = getattr(batch, "plan", None)
        extra = {"plan": plan} if plan is not None else {}
        return model(batch.x, batch.edge_index, edge_attr=getattr(batch, "edge_attr", None),
                     batch=batch.batch, pe=getattr(batch, "pe", None), **extra)

    def _binary(self) -> bool:
        classes = self.cfg.model.get("num_classes", 0)
        return classes != "auto" and int(classes or 0) == 2

    def build_metrics(self) -> MetricCollection:
        metrics = [Accuracy()]
        if self._binary():
            metrics.append(RocAuc())
        return MetricCollection(*metrics)

    def postprocess(self, outputs: torch.Tensor, batch: Batch) -> dict[str, Any]:
        """``logits``, ``pred`` (arg-max) and ``probs`` (softmax), per node or per graph."""
        logits = outputs.detach().float().cpu()
        return {"logits": logits.numpy(), "pred": logits.argmax(-1).numpy(),
                "probs": torch.softmax(logits, -1).numpy()}

    # ---------------------------------------------------------------- predict
    input_suffixes = (".npz", ".pt")

    def load_input(self, path: str | os.PathLike) -> Data:
        """One graph from an ``.npz`` (``x (N, F)``, ``edge_index (2, E)``, optional
        ``edge_attr (E, D)`` and ``y``) or a ``.pt`` holding a PyG ``Data`` or a dict of its
        tensors (loaded with ``weights_only=True``: nothing but tensors, plain data and PyG's
        ``Data`` classes is unpickled), prepared by ``preprocess``."""
        path = Path(path)
        if path.is_file() and path.suffix.lower() == ".pt":
            sample = _load_graph_pt(path)
        elif path.is_file() and path.suffix.lower() != ".npz":
            raise ValueError(f"input file {path}: expected a graph .npz or .pt, got "
                             f"'{path.suffix}'")
        else:
            sample = super().load_input(path)  # allow_pickle=False; corrupt files: one line
        return self.preprocess(sample, source=f"input file {path}")

    def preprocess(self, sample: Data | Mapping[str, Any], *, source: str = "sample") -> Data:
        """A graph (PyG ``Data``, or a mapping with ``x``, ``edge_index``, optional
        ``edge_attr`` and ``y``) checked by ``validate_input`` and prepared as the dataset
        prepares its graphs: ``x`` row-normalised when ``data.normalize_features``, the
        positional encodings of ``data.pe`` added (``AddPositionalEncodings``)."""
        fields = _graph_fields(sample)
        self.validate_input(fields, source=source)
        data = Data(num_nodes=len(fields["x"]))
        data.x = torch.as_tensor(np.asarray(fields["x"]))
        if data.x.is_floating_point() or self.cfg.model.get("node_vocab") is None:
            data.x = data.x.float()
            if self.cfg.data.get("normalize_features"):
                data.x = normalize_rows(data.x)
        else:
            data.x = data.x.long()
        data.edge_index = torch.as_tensor(np.asarray(fields["edge_index"])).long()
        if fields.get("edge_attr") is not None:
            data.edge_attr = torch.as_tensor(np.asarray(fields["edge_attr"]))
        if fields.get("y") is not None:
            data.y = torch.as_tensor(np.asarray(fields["y"]))
        pe = self.cfg.data.get("pe")
        if pe:
            data = AddPositionalEncodings(**dict(to_container(pe)))(data)
        return data

    def validate_input(self, sample: Data | Mapping[str, Any], *, source: str = "sample") -> None:
        """Raise ``ValueError`` (naming ``source``, the field, the expectation and what came)
        unless ``sample`` is a graph the model reads: ``x (N, model.in_channels)`` finite
        numbers (``(N, len(model.node_vocab))`` integers for categorical features), ``N >= 1``;
        ``edge_index (2, E)`` integers in ``[0, N)``; ``edge_attr (E, model.edge_dim)`` when
        the model has edge features (optional, ignored otherwise)."""
        fields = _graph_fields(sample)
        model = self.cfg.model
        vocab = model.get("node_vocab")
        width = len(vocab) if vocab is not None else model.get("in_channels")
        width = width if isinstance(width, int) else "F"
        x = check_field(fields, "x", source=source, shape=("N", width),
                        kind="int" if vocab is not None else "number", finite=True,
                        note=f"(model.in_channels={width})" if vocab is None else "")
        if len(x) == 0:
            raise ValueError(f"{source}: x: expected at least one node, got shape "
                             f"{tuple(x.shape)}")
        check_field(fields, "edge_index", source=source, shape=(2, "E"), kind="int", low=0,
                    high=len(x), note=f"(node ids of N={len(x)} nodes)")
        edges = np.shape(fields["edge_index"])[1]
        edge_vocab, edge_dim = model.get("edge_vocab"), model.get("edge_dim")
        edge_width = len(edge_vocab) if edge_vocab is not None else edge_dim
        if isinstance(edge_width, int):
            check_field(fields, "edge_attr", source=source, shape=(edges, edge_width),
                        kind="int" if edge_vocab is not None else "number", finite=True,
                        required=False, note=f"(model.edge_dim={edge_width})")

    def write_prediction(self, sample: Data, result: Mapping[str, np.ndarray],
                         path: str | os.PathLike) -> list[Path]:
        """``.npz`` of ``logits`` and ``pred``: per node (node tasks) or for the graph, and the
        ground truth ``y`` when the input had it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        extra = {"y": sample.y.cpu().numpy()} if getattr(sample, "y", None) is not None else {}
        np.savez_compressed(path, **{k: np.asarray(v) for k, v in result.items()}, **extra)
        return [path]


def _graph_fields(sample: Data | Mapping[str, Any]) -> dict[str, Any]:
    """``x``, ``edge_index``, ``edge_attr``, ``y`` of a ``Data`` or a mapping (absent: None)."""
    if isinstance(sample, Data):
        return {k: getattr(sample, k, None) for k in ("x", "edge_index", "edge_attr", "y")}
    if isinstance(sample, Mapping):
        return dict(sample)
    raise TypeError(f"graph input: expected a torch_geometric Data or a mapping of arrays, got "
                    f"{type(sample).__name__}")


def _load_graph_pt(path: Path) -> Data | dict[str, Any]:
    """A ``Data`` (or dict of tensors) saved with ``torch.save``, loaded with
    ``weights_only=True`` and PyG's ``Data`` classes allowed; anything else is refused."""
    from torch_geometric.data.data import DataEdgeAttr, DataTensorAttr
    from torch_geometric.data.storage import GlobalStorage
    try:
        with torch.serialization.safe_globals([Data, DataEdgeAttr, DataTensorAttr,
                                               GlobalStorage]):
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - a corrupt or unsafe file makes torch raise anything
        reason = next((ln.strip() for ln in str(err).splitlines()
                       if "GLOBAL" in ln or "Unsupported" in ln), type(err).__name__)
        raise ValueError(f"input file {path}: not a readable graph .pt (loaded with "
                         f"weights_only=True: tensors and PyG Data only): {reason}") from err
    if not isinstance(loaded, (Data, Mapping)):
        raise ValueError(f"input file {path}: expected a torch_geometric Data or a dict of "
                         f"tensors, got {type(loaded).__name__}")
    return loaded


@TASKS.register
class NodeClassificationTask(_GraphTask):
    """Cross-entropy on the nodes of ``mask``; reports ``acc`` (and ``roc_auc`` for two
    classes). ``eval.metric: roc_auc`` selects checkpoints by ROC-AUC (Tolokers)."""

    loss_keys = ("input_l2", "label_smoothing")

    def num_samples(self, batch: Batch) -> int:
        return int(batch.mask.sum()) if hasattr(batch, "mask") else int(batch.num_nodes)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        if not hasattr(batch, "mask"):
            raise ValueError("NodeClassificationTask: batches need 'mask' (a node dataset); got "
                             f"keys {sorted(batch.keys())}")
        return F.cross_entropy(outputs[batch.mask].float(), batch.y[batch.mask],
                               label_smoothing=self.label_smoothing)

    def build_loss(self, model: torch.nn.Module) -> Callable[[torch.Tensor, Batch], torch.Tensor]:
        """``loss`` plus, with ``loss.input_l2 > 0``, the coupled L2 on ``model.input_encoder``
        while training (``WithInputL2``; none for an encoder without a weight matrix, e.g.
        categorical features)."""
        input_l2 = self.loss_options().get("input_l2") or 0.0
        if not isinstance(input_l2, (int, float)) or isinstance(input_l2, bool) or input_l2 < 0:
            raise ValueError(f"loss.input_l2: expected a number >= 0, got {input_l2!r}")
        encoder = getattr(model, "input_encoder", None)
        if input_l2 == 0 or not isinstance(getattr(encoder, "weight", None), torch.Tensor):
            return self.loss
        return WithInputL2(self.loss, encoder, input_l2)


@TASKS.register
class GraphClassificationTask(_GraphTask):
    """Cross-entropy per graph; reports ``acc`` (and ``roc_auc`` for two classes)."""

    loss_keys = ("label_smoothing",)

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(outputs.float(), batch.y.view(-1),
                               label_smoothing=self.label_smoothing)


@TASKS.register
class GraphPropertyTask(_GraphTask):
    """Several targets per graph, ``y (G, K)`` (NaN = unlabelled), of the kind the dataset
    class declares (``target_kind``), so one config serves a family by ``data.name`` alone:

    - ``"multilabel"`` (Peptides-func): binary cross-entropy per label; reports ``ap`` (mean
      average precision over labels);
    - ``"regression"`` (Peptides-struct): L1 loss, LRGB's; reports ``mae``.

    ``eval.metric: null`` selects by the dataset class's ``metric`` (the kind's), ``eval.mode:
    null`` in its direction (min for ``mae``). An explicit metric the kind does not report, or
    an explicit ``model.num_classes`` other than the class's, stops the run before training."""

    best_metric = "ap"
    static_batches = True  # padded graphs have NaN labels: the loss skips them
    #: The metric each kind of target reports (besides the loss).
    REPORTS = {"multilabel": "ap", "regression": "mae"}

    @functools.cached_property
    def dataset_type(self) -> type | None:
        """The class ``data.name`` names (``datasets.dataset_class``), None without a name:
        read from the class, so prediction from a checkpoint needs no dataset files."""
        name = self.cfg.data.get("name")
        return dataset_class(str(name), self.cfg.data.get("root")) if name else None

    @functools.cached_property
    def target_kind(self) -> str:
        """The dataset class's ``target_kind``; ``"multilabel"`` where it has none."""
        kind = getattr(self.dataset_type, "target_kind", "") or "multilabel"
        if kind not in self.REPORTS:
            raise ValueError(f"{self.cfg.data.get('name')}: target_kind {kind!r} is not one of "
                             f"{sorted(self.REPORTS)}")
        return kind

    def selection_metric(self) -> tuple[str, str]:
        """``eval.metric`` / ``eval.mode`` when set, else the dataset class's ``metric`` where
        the kind reports it (``ap`` or ``mae``; a class that inherits another gets the kind's)
        and its direction (``metrics.selection_mode``); no dataset is built for it.
        ``ValueError`` for an ``eval.metric`` the kind does not report."""
        reported = self.REPORTS[self.target_kind]
        metric = self.cfg.eval.get("metric")
        if metric is None:  # the class's own metric where the kind reports it (else inherited)
            declared = getattr(self.dataset_type, "metric", None)
            metric = declared if declared in (reported, "loss") else reported
        elif metric not in (reported, "loss"):
            raise ValueError(f"eval.metric={metric}: {self.cfg.data.get('name')} has "
                             f"{self.target_kind} targets, reported as {reported} (and loss); "
                             "set eval.metric=null")
        return str(metric), selection_mode(metric, self.cfg.eval.get("mode"))

    def build_model(self) -> torch.nn.Module:
        """As ``_GraphTask.build_model``, after checking that an explicit ``model.num_classes``
        is the dataset class's target count (a config of the other set, e.g. 10 labels for
        Peptides-struct's 11 targets, would fail at the first step)."""
        want = getattr(self.dataset_type, "num_classes", 0)
        given = self.cfg.model.get("num_classes")
        if want and isinstance(given, int) and given != want:
            raise ValueError(f"model.num_classes={given}: {self.cfg.data.get('name')} has "
                             f"{want} targets; set model.num_classes=auto")
        return super().build_model()

    def loss(self, outputs: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Mean loss over the labelled entries (binary cross-entropy or L1, ``target_kind``). A
        masked mean (``where``, not boolean indexing: no host sync for the number of labels).
        Unlabelled entries (padded graphs) are masked in the outputs too, so a non-finite
        output there reaches neither the loss nor the gradients."""
        y = (batch["y"] if is_static_batch(batch) else batch.y).float()
        known = ~torch.isnan(y)
        target = torch.where(known, y, torch.zeros_like(y))
        outputs = torch.where(known, outputs.float(), target)
        if self.target_kind == "regression":
            per_entry = F.l1_loss(outputs, target, reduction="none")
        else:
            per_entry = F.binary_cross_entropy_with_logits(outputs, target, reduction="none")
        return torch.where(known, per_entry, 0.0).sum() / known.sum()

    def build_metrics(self) -> MetricCollection:
        if self.target_kind == "regression":
            return MetricCollection(MeanAbsoluteError())
        return MetricCollection(AveragePrecision())

    def postprocess(self, outputs: torch.Tensor, batch: Batch) -> dict[str, Any]:
        """Regression: ``pred (G, K)``. Multi-label: ``logits (G, L)``, ``pred`` (``logits >
        0``) and ``probs`` (sigmoid) per label."""
        values = outputs.detach().float().cpu()
        if self.target_kind == "regression":
            return {"pred": values.numpy()}
        return {"logits": values.numpy(), "pred": (values > 0).long().numpy(),
                "probs": torch.sigmoid(values).numpy()}


@TASKS.register
class MultiLabelGraphTask(GraphPropertyTask):
    """The name ``GraphPropertyTask`` had when it took only multi-label targets; kept so that
    configs and run directories written before read as they did (the same task)."""
