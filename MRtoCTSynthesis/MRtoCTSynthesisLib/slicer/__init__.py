"""Layer 7, Slicer side: what the Slicer module needs without torch (engine command lines, the subprocess
runner, geometry conversion, MRML glue). Nothing here imports torch or the layers below at import time."""
