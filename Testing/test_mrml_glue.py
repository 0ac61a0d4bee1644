"""MRML glue (MRtoCTSynthesisLib.slicer.mrml) tested against the real MRML library, without the Slicer application.

The MRML classes come from the ``slicer-core`` wheel (``pip install slicer-core==5.13.31053.0``; it pins
``vtk==9.6.2``), which provides them in the ``slicer`` namespace (``slicer.vtkMRMLScene``...) and in
``slicer_core``. That is not the unrelated PyPI package called ``slicer``, so the tests check that the
import really has MRML before using it, and skip (saying why) when slicer-core is not installed.

Slicer's own volume reader and writer (vtkMRMLVolumeArchetypeStorageNode) serve as the independent
reference for the ITK/LPS <-> IJK->RAS conversion of ``slicer_bridge``.
"""

import importlib.metadata

import numpy as np
import pytest
import SimpleITK as sitk
from conftest import rotation_direction

from MRtoCTSynthesisLib.slicer import bridge as sb
from MRtoCTSynthesisLib.slicer import mrml as glue


def _mrml():
    try:
        version = importlib.metadata.version("slicer-core")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("slicer-core is not installed (pip install slicer-core==5.13.31053.0, which brings vtk==9.6.2)")
    try:
        import slicer
    except ImportError as exc:  # pragma: no cover - depends on the wheel
        pytest.skip(f"slicer-core {version} is installed but `import slicer` fails: {exc}")
    if not hasattr(slicer, "vtkMRMLScene"):
        pytest.skip(f"`import slicer` is not slicer-core's MRML namespace ({getattr(slicer, '__file__', '?')})")
    return slicer


@pytest.fixture
def scene():
    return _mrml().vtkMRMLScene()


@pytest.fixture
def oblique_matrix():
    return sb.ijk_to_ras_from_geometry((0.7, 1.3, 2.9), (-12.5, 30.25, 101.0), rotation_direction())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
def test_volume_node_round_trips_array_and_matrix_exactly(scene, oblique_matrix, dtype):
    arr = (np.random.default_rng(0).normal(size=(5, 6, 7)) * 100).astype(dtype)
    node = glue.volume_node_from_array(scene, arr, oblique_matrix, name="vol")
    assert node.IsA("vtkMRMLScalarVolumeNode") and node.GetName() == "vol"
    assert node.GetDisplayNode() is not None
    back, matrix = glue.array_and_matrix_from_node(node)
    assert back.dtype == arr.dtype and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_array_equal(matrix, oblique_matrix)
    assert glue.volume_shape(node) == arr.shape
    # vtkImageData keeps Slicer's convention: geometry lives in the node only
    image = node.GetImageData()
    assert image.GetDimensions() == (7, 6, 5) and image.GetOrigin() == (0, 0, 0) and image.GetSpacing() == (1, 1, 1)
    # the (k, j, i) convention: voxel (i, j, k) of VTK is arr[k, j, i]
    assert image.GetScalarComponentAsDouble(6, 2, 4, 0) == pytest.approx(float(arr[4, 2, 6]))


def test_mrml_accessors_agree_with_the_bridge_geometry(scene, oblique_matrix):
    node = glue.volume_node_from_array(scene, np.zeros((3, 4, 5), np.float32), oblique_matrix)
    spacing, origin, direction = sb.geometry_from_ijk_to_ras(oblique_matrix)
    np.testing.assert_allclose(node.GetSpacing(), spacing, atol=1e-12)
    np.testing.assert_allclose(node.GetOrigin(), np.asarray(origin) * [-1, -1, 1], atol=1e-12)  # RAS origin
    dirs = np.zeros((3, 3))
    node.GetIJKToRASDirections(dirs)
    np.testing.assert_allclose(dirs, np.diag([-1, -1, 1]) @ np.asarray(direction).reshape(3, 3), atol=1e-12)


@pytest.mark.parametrize("suffix", [".nrrd", ".nii.gz"])
def test_slicer_reader_sees_the_geometry_the_bridge_writes(scene, oblique_matrix, tmp_path, suffix):
    """What the engine writes (SimpleITK + bridge geometry) is where Slicer's own reader puts it."""
    arr = np.random.default_rng(1).normal(size=(5, 6, 7)).astype(np.float32)
    path = tmp_path / f"x{suffix}"
    sitk.WriteImage(sb.sitk_image_from_array(arr, oblique_matrix), str(path))
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(path))
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode")
    assert storage.ReadData(node)
    back, matrix = glue.array_and_matrix_from_node(node)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(matrix, oblique_matrix,
                               atol=1e-5 if suffix == ".nii.gz" else 1e-12)  # NIfTI stores float32


def test_slicer_writer_writes_the_geometry_the_bridge_reads(scene, oblique_matrix, tmp_path):
    """What Slicer writes is read back by the bridge (SimpleITK) with the same array and matrix."""
    arr = np.random.default_rng(2).normal(size=(4, 6, 9)).astype(np.float32)
    node = glue.volume_node_from_array(scene, arr, oblique_matrix)
    storage = scene.AddNewNodeByClass("vtkMRMLVolumeArchetypeStorageNode")
    storage.SetFileName(str(tmp_path / "y.nrrd"))
    assert storage.WriteData(node)
    back, matrix = sb.array_and_ijk_to_ras_from_sitk(sitk.ReadImage(str(tmp_path / "y.nrrd")))
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(matrix, oblique_matrix, atol=1e-12)


def test_update_existing_node_and_bool(scene, oblique_matrix):
    node = glue.volume_node_from_array(scene, np.ones((2, 3, 4), np.float32), oblique_matrix)
    mask = np.zeros((3, 4, 5), bool)
    mask[1, 2, 3] = True
    same = glue.volume_node_from_array(scene, mask, np.eye(4), node=node)
    assert same is node and scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    back, matrix = glue.array_and_matrix_from_node(node)
    assert back.dtype == np.uint8 and back.sum() == 1 and back[1, 2, 3] == 1
    np.testing.assert_array_equal(matrix, np.eye(4))
    with pytest.raises(ValueError):
        glue.update_volume_from_array(node, np.zeros((3, 4)))
    labelmap = glue.volume_node_from_array(scene, mask, oblique_matrix, class_name="vtkMRMLLabelMapVolumeNode")
    assert labelmap.IsA("vtkMRMLLabelMapVolumeNode")


def test_copy_grid_requires_same_dimensions_and_copies_transform(scene, oblique_matrix):
    slicer = _mrml()
    mri = glue.volume_node_from_array(scene, np.zeros((3, 4, 5), np.float32), oblique_matrix, name="mri")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    mri.SetAndObserveTransformNodeID(transform.GetID())
    out = glue.volume_node_from_array(scene, np.ones((3, 4, 5), np.float32), np.eye(4), name="sct")
    glue.copy_grid(mri, out)
    np.testing.assert_array_equal(glue.get_ijk_to_ras(out), oblique_matrix)
    assert out.GetTransformNodeID() == transform.GetID()
    other = glue.volume_node_from_array(scene, np.ones((3, 4, 6), np.float32), np.eye(4), name="other")
    with pytest.raises(ValueError, match="dimensions differ"):
        glue.copy_grid(mri, other)
    assert isinstance(slicer.vtkMRMLScene(), type(scene))


def test_world_matrix_includes_parent_linear_transforms(scene, oblique_matrix):
    node = glue.volume_node_from_array(scene, np.zeros((3, 4, 5), np.float32), oblique_matrix)
    np.testing.assert_array_equal(glue.world_ijk_to_ras(node), oblique_matrix)
    outer = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    inner = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    a = np.eye(4)
    a[:3, 3] = (10.0, -5.0, 2.5)
    b = sb.ijk_to_ras_from_geometry((1, 1, 1), (0, 0, 0), rotation_direction(0, 0, 30))
    outer.SetMatrixTransformToParent(glue.numpy_to_vtk_matrix(a))
    inner.SetMatrixTransformToParent(glue.numpy_to_vtk_matrix(b))
    inner.SetAndObserveTransformNodeID(outer.GetID())
    node.SetAndObserveTransformNodeID(inner.GetID())
    np.testing.assert_allclose(glue.world_ijk_to_ras(node), a @ b @ oblique_matrix, atol=1e-12)


def test_metrics_table_node(scene):
    rows = sb.metrics_table_rows({"mae_hu": 81.25, "me_hu": -3.5, "psnr_db": 27.123, "ssim": 0.91234, "voxels": 1000})
    table = scene.AddNewNodeByClass("vtkMRMLTableNode")
    glue.fill_table_node(table, rows)
    assert glue.table_rows(table) == [("MAE (HU)", "81.2"), ("ME (HU)", "-3.5"), ("PSNR (dB)", "27.12"),
                                      ("SSIM", "0.9123"), ("Voxels evaluated", "1000")]
    assert table.GetNumberOfColumns() == 2 and table.GetColumnName(0) == "Metric"
    glue.fill_table_node(table, rows[:1])  # refilling replaces the contents
    assert glue.table_rows(table) == [("MAE (HU)", "81.2")]
    with pytest.raises(ValueError):
        glue.fill_table_node(table, [("only one cell",)])
