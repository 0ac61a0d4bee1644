"""Functions that move arrays and geometry in and out of MRML nodes.

These functions work on MRML nodes and scenes but not on the Slicer application, so the module uses
them inside Slicer, and ``Testing/test_mrml_glue.py`` tests them outside Slicer against the real MRML
library from the ``slicer-core`` wheel. VTK is imported inside the functions, and MRML classes are
reached only through the node or scene objects passed in, so this file imports without VTK.

Arrays are indexed ``(k, j, i)``, the same order as ``slicer.util.arrayFromVolume`` and
``SimpleITK.GetArrayFromImage``. Geometry is stored only in the node's IJK->RAS matrix. The
``vtkImageData`` keeps origin 0 and spacing 1, as Slicer expects.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _vtk():
    import vtk
    from vtk.util import numpy_support

    return vtk, numpy_support


def matrix_to_numpy(vtk_matrix) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=np.float64)


def numpy_to_vtk_matrix(matrix):
    vtk, _ = _vtk()
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"a 4x4 matrix is needed, got shape {m.shape}")
    out = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            out.SetElement(r, c, float(m[r, c]))
    return out


def get_ijk_to_ras(node) -> np.ndarray:
    """The IJK->RAS matrix of a volume node as a 4x4 numpy array."""
    vtk, _ = _vtk()
    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return matrix_to_numpy(m)


def set_ijk_to_ras(node, matrix) -> None:
    """Set a volume node's IJK->RAS matrix (its origin, spacing and directions) from a 4x4 array."""
    node.SetIJKToRASMatrix(numpy_to_vtk_matrix(matrix))


def volume_shape(node) -> tuple[int, int, int]:
    """``(nk, nj, ni)`` of a volume node, or (0, 0, 0) when it has no image data."""
    image = node.GetImageData()
    if image is None:
        return (0, 0, 0)
    ni, nj, nk = image.GetDimensions()
    return (nk, nj, ni)


def update_volume_from_array(node, array, ijk_to_ras=None) -> None:
    """Put ``array`` (k, j, i) into ``node`` and, if ``ijk_to_ras`` is given, set its geometry.

    The array is deep-copied. bool is stored as uint8. Only 3D scalar arrays are accepted.
    """
    vtk, numpy_support = _vtk()
    arr = np.asarray(array)
    if arr.ndim != 3:
        raise ValueError(f"a 3D array (k, j, i) is needed, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    arr = np.ascontiguousarray(arr)
    nk, nj, ni = arr.shape
    image = vtk.vtkImageData()
    image.SetDimensions(ni, nj, nk)
    scalars = numpy_support.numpy_to_vtk(arr.reshape(-1), deep=True,
                                         array_type=numpy_support.get_vtk_array_type(arr.dtype))
    scalars.SetName("ImageScalars")
    image.GetPointData().SetScalars(scalars)
    was_modifying = node.StartModify()
    try:
        node.SetAndObserveImageData(image)
        if ijk_to_ras is not None:
            set_ijk_to_ras(node, ijk_to_ras)
    finally:
        node.EndModify(was_modifying)


def volume_node_from_array(scene, array, ijk_to_ras, name: str = "Volume", node=None,
                           class_name: str = "vtkMRMLScalarVolumeNode", display: bool = True):
    """A volume node in ``scene`` holding ``array`` (k, j, i) on the grid ``ijk_to_ras``.

    When ``node`` is given it is filled in place; otherwise a new ``class_name`` node is added.
    ``display`` creates the default display nodes, which needs a scene that can make them.
    """
    if node is None:
        node = scene.AddNewNodeByClass(class_name, name)
    update_volume_from_array(node, array, ijk_to_ras)
    if display and node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def array_and_matrix_from_node(node) -> tuple[np.ndarray, np.ndarray]:
    """``(array (k, j, i) copy, IJK->RAS 4x4)`` of a scalar volume node."""
    _, numpy_support = _vtk()
    image = node.GetImageData()
    if image is None:
        raise ValueError(f"volume node {node.GetName()!r} has no image data")
    scalars = image.GetPointData().GetScalars()
    if scalars is None:
        raise ValueError(f"volume node {node.GetName()!r} has no voxel values")
    if scalars.GetNumberOfComponents() != 1:
        raise ValueError(f"volume node {node.GetName()!r} has {scalars.GetNumberOfComponents()} components per voxel")
    ni, nj, nk = image.GetDimensions()
    arr = numpy_support.vtk_to_numpy(scalars).reshape(nk, nj, ni).copy()
    return arr, get_ijk_to_ras(node)


def copy_grid(source, target) -> None:
    """Give ``target`` the exact IJK->RAS matrix (and parent transform) of ``source``.

    Both volumes must have the same voxel dimensions, because a matrix only describes the grid it was
    made for. Otherwise ValueError is raised.
    """
    if volume_shape(source) != volume_shape(target):
        raise ValueError(f"cannot copy the grid of {source.GetName()!r} {volume_shape(source)} onto "
                         f"{target.GetName()!r} {volume_shape(target)}: the voxel dimensions differ")
    set_ijk_to_ras(target, get_ijk_to_ras(source))
    target.SetAndObserveTransformNodeID(source.GetTransformNodeID())


def fill_table_node(table_node, rows: Sequence[tuple[str, str]],
                    headers: tuple[str, str] = ("Metric", "Value")) -> None:
    """Replace the contents of a ``vtkMRMLTableNode`` with two string columns."""
    vtk, _ = _vtk()
    table = vtk.vtkTable()
    columns = []
    for header in headers:
        col = vtk.vtkStringArray()
        col.SetName(header)
        columns.append(col)
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"row {row!r} has {len(row)} cells, expected {len(headers)}")
        for col, cell in zip(columns, row):
            col.InsertNextValue(str(cell))
    for col in columns:
        table.AddColumn(col)
    was_modifying = table_node.StartModify()
    try:
        table_node.SetAndObserveTable(table)
        if hasattr(table_node, "SetUseColumnTitleAsColumnHeader"):  # Slicer >= 5.x
            table_node.SetUseColumnTitleAsColumnHeader(True)
            for header in headers:
                table_node.SetColumnTitle(header, header)
        else:
            table_node.SetUseColumnNameAsColumnHeader(True)
        table_node.SetLocked(True)
    finally:
        table_node.EndModify(was_modifying)


def table_rows(table_node) -> list[tuple[str, ...]]:
    """The cells of a table node as text, row by row."""
    table = table_node.GetTable()
    return [tuple(table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns()))
            for r in range(table.GetNumberOfRows())]


def world_ijk_to_ras(node) -> np.ndarray:
    """IJK -> world RAS of a volume node: its IJK->RAS matrix, then any parent linear transforms.

    This is the geometry to write to a file, so that the engine sees the volume where Slicer shows it. A
    non-linear parent transform raises ValueError, because it cannot be expressed as a matrix; harden it first.
    """
    matrix = get_ijk_to_ras(node)
    transform = node.GetParentTransformNode()
    if transform is None:
        return matrix
    if not transform.IsTransformToWorldLinear():
        raise ValueError(f"volume {node.GetName()!r} is under a non-linear transform; harden the transform first "
                         "(Data module: right-click the transform > Harden transform)")
    vtk, _ = _vtk()
    to_world = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(to_world)
    return matrix_to_numpy(to_world) @ matrix


# ======================================================================================= results display
def _ramp(points, t: float) -> tuple[float, float, float]:
    """Piecewise-linear colour at ``t`` in [0, 1] through ``points`` = [(t, (r, g, b)), ...]."""
    for (t0, c0), (t1, c1) in zip(points, points[1:]):
        if t <= t1:
            w = 0.0 if t1 == t0 else (t - t0) / (t1 - t0)
            return tuple(a + w * (b - a) for a, b in zip(c0, c1))
    return points[-1][1]


#: dark -> bright for the Monte-Carlo std (perceptually ordered, close to matplotlib's inferno)
SEQUENTIAL_POINTS = [(0.0, (0.0, 0.0, 0.016)), (0.25, (0.341, 0.063, 0.431)), (0.5, (0.733, 0.216, 0.329)),
                     (0.75, (0.976, 0.557, 0.035)), (1.0, (0.988, 1.0, 0.643))]
#: blue -> white -> red for sCT - CT (white at 0 HU when the window is symmetric)
DIVERGING_POINTS = [(0.0, (0.019, 0.188, 0.380)), (0.25, (0.263, 0.576, 0.765)), (0.5, (0.969, 0.969, 0.969)),
                    (0.75, (0.839, 0.376, 0.302)), (1.0, (0.404, 0.0, 0.051))]


def color_table(scene, name: str, points, n: int = 256):
    """A ``vtkMRMLColorTableNode`` called ``name`` with ``n`` colours along ``points`` (made once per scene)."""
    node = scene.GetFirstNodeByName(name)
    if node is not None and node.IsA("vtkMRMLColorTableNode"):
        return node
    node = scene.AddNewNodeByClass("vtkMRMLColorTableNode", name)
    node.SetTypeToUser()
    node.SetNumberOfColors(n)
    for i in range(n):
        r, g, b = _ramp(points, i / (n - 1))
        node.SetColor(i, f"{i}", r, g, b, 1.0)
    node.SetHideFromEditors(False)
    return node


def place_in_study(scene, subject_hierarchy_class, source, nodes, folder_name: str) -> int:
    """Put ``nodes`` in a subject-hierarchy folder ``folder_name`` beside ``source`` (under its study).

    Returns the folder's item ID. Items that do not exist yet (a scene without Slicer's subject hierarchy
    plugins) are created.
    """
    sh = subject_hierarchy_class.GetSubjectHierarchyNode(scene)
    root = sh.GetSceneItemID()
    source_item = sh.GetItemByDataNode(source)
    if not source_item:
        source_item = sh.CreateItem(root, source)
    parent = sh.GetItemParent(source_item) or root
    folder = sh.GetItemChildWithName(parent, folder_name)
    if not folder:
        folder = sh.CreateFolderItem(parent, folder_name)
    for node in nodes:
        if node is None:
            continue
        item = sh.GetItemByDataNode(node)
        if not item:
            item = sh.CreateItem(folder, node)
        else:
            sh.SetItemParent(item, folder)
    return folder
