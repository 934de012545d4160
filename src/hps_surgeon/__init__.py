"""hps-surgeon: rewrite embedding lookups in ONNX models into HPS_TRT nodes for NVIDIA's HPS.

The pipeline's stages stay at the top, one module each with plain data between them:
load -> match -> plan -> rewrite -> export. Around them: `hps/` (the HPS contract, table files,
config, reference and native lookups), `verify/` (Polygraphy), `deploy/` (Triton), `cli/`.
"""

from .api import RewriteResult, ScanEntry, ScanResult, rewrite, scan
from .check import check_models as check
from .deploy import deploy
from .errors import SurgeonError
from .hps.reference import ReferenceLookup
from .verify import verify  # Polygraphy itself is imported only when a verification runs

__version__ = "0.1.0"
__all__ = ["scan", "rewrite", "verify", "check", "deploy", "RewriteResult", "ScanResult", "ScanEntry",
           "SurgeonError", "ReferenceLookup"]
