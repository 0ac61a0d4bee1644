"""Shared pytest fixtures: small volumes with awkward geometry, thread limits for the 2-core CI machine."""

import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

# CI machines have 2 cores; honour OMP_NUM_THREADS when set (oversubscribed torch threads spin and crawl)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


def rotation_direction(ax_deg=20.0, ay_deg=-10.0, az_deg=35.0):
    """An oblique, proper rotation matrix (row-major tuple) for direction cosines."""
    ax, ay, az = np.deg2rad([ax_deg, ay_deg, az_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


@pytest.fixture
def oblique_image():
    """A 13x10x7 (x, y, z) float image with anisotropic spacing and oblique direction cosines."""
    rng = np.random.default_rng(0)
    arr = rng.normal(size=(7, 10, 13)).astype(np.float32)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 1.3, 2.9))
    img.SetOrigin((-12.5, 30.25, 101.0))
    img.SetDirection(rotation_direction())
    return img


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one torch thread: tiny networks gain nothing from a second one and lose a lot
    when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_phantom_cases(tmp_path_factory):
    """Two 32x32x8 phantom cases in the SynthRAD layout, written once per test session through the CLI."""
    from MRtoCTSynthesisLib.apps.cli import main

    out = tmp_path_factory.mktemp("tiny_phantoms")
    assert main(["phantom", "--out", str(out), "--cases", "2", "--size", "32", "32", "8",
                 "--spacing", "11", "11", "14"]) == 0
    return out


@pytest.fixture(scope="session")
def demo_four_slices(tmp_path_factory):
    """The 4 central axial slices (16-19 of 36) of the bundled demo case as mr/ct/mask NIfTI files (cropped with
    SimpleITK, which keeps the physical position of every voxel): small inputs for CLI runs with the demo model."""
    from MRtoCTSynthesisLib.assets import DEMO_CASE

    out = tmp_path_factory.mktemp("demo_four_slices")
    for name in ("mr", "ct", "mask"):
        image = sitk.ReadImage(str(DEMO_CASE / f"{name}.nii.gz"))
        sitk.WriteImage(image[:, :, 16:20], str(out / f"{name}.nii.gz"))
    return out
