"""hps-surgeon: rewrite embedding lookups in ONNX models into HPS_TRT nodes for NVIDIA's HPS.

Stages (one module each, plain data between them): load -> match -> plan -> rewrite -> export.
"""

from .api import RewriteResult, ScanEntry, ScanResult, rewrite, scan
from .errors import SurgeonError
from .reference import ReferenceLookup

__version__ = "0.1.0"
__all__ = ["rewrite", "scan", "RewriteResult", "ScanResult", "ScanEntry", "SurgeonError", "ReferenceLookup"]
