"""Layer 1, files: volumes (NIfTI/NRRD/MHA/DICOM) with their geometry, atomic writes, slicing, intensity maps."""
