"""MRtoCTSynthesis engine: MRI -> synthetic CT with conditional diffusion models.

Pure Python (torch, numpy, SimpleITK); importable and testable without 3D Slicer. The Slicer module
``MRtoCTSynthesis.py`` next to this package drives it through the ``mrtoct`` command line.
"""

__version__ = "0.1.0"
