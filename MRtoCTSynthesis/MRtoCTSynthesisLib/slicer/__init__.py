"""Layer 7, Slicer side: what the Slicer module needs without torch. ``bridge`` (engine command lines, process
output, geometry conversion), ``mrml`` (MRML glue) and ``downloads`` (the model cache) are pure Python, tested
outside Slicer; ``logic`` (the engine job runner behind ``MRtoCTSynthesisLogic``) and ``selftest`` (the body of
``MRtoCTSynthesisTest``) import Slicer's ``slicer``/``qt`` and load only inside Slicer or the test harness. This
package imports none of them itself, and nothing here imports torch or the layers below at import time."""
