"""The HPS_TRT plugin contract every stage agrees on (HugeCTR's hps_trt, creator HPS_TRT v1)."""

from onnx import AttributeProto

HPS_OP = "HPS_TRT"
#: ONNX Runtime's TensorRT execution provider looks for TensorRT plugin nodes in this domain.
DEFAULT_DOMAIN = "trt.plugins"
DOMAIN_VERSION = 1
#: HugeCTR's HPS_TRT v1 creator declares exactly these fields (hps_plugin.cpp).
ATTRIBUTES = {"ps_config_file": AttributeProto.STRING, "model_name": AttributeProto.STRING,
              "table_id": AttributeProto.INT, "emb_vec_size": AttributeProto.INT}


def field_text(value: bytes | str) -> str:
    """A string attribute as text, without the trailing NUL HugeCTR's samples (and we) append."""
    return (value.decode() if isinstance(value, bytes) else str(value)).rstrip("\0")
