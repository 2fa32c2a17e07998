"""LiDAR 3D object detection with linear group RNNs (LION).

- ``kitti`` / ``datasets``: the official KITTI object layout (``KittiDataset``) and ray-cast
  synthetic scenes (``SyntheticLidar``, the embedded default), boxes in OpenPCDet's convention;
- ``transforms``: GT sampling, global flip / rotation / scaling, object noise, range filter;
- ``boxes``: rotated BEV / 3D IoU (numba), points in boxes, rotated BEV NMS;
- ``evaluation``: KITTI AP (R40 and 11-point), BEV and 3D, easy / moderate / hard;
- ``sparse``: voxelisation, mean VFE, submanifold sparse 3D convolution in torch (spconv optional);
- ``models``: ``LION`` (window-group Mamba backbone, BEV backbone, CenterPoint-style head);
- ``task``: ``DetectionTask``.
"""
