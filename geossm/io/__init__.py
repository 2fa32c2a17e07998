"""File formats the library reads and writes with NumPy alone (no optional dependency):
``ply`` (binary / ascii PLY point clouds with extra per-point properties)."""
