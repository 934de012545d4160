"""Deployment: a Triton model repository (`repository`) with the TensorRT engine recipe and
Triton's config (`triton`), from a rewrite folder."""

from .repository import DEFAULT_PLUGIN_LIB, DeployOptions, DeployResult, deploy

__all__ = ["DEFAULT_PLUGIN_LIB", "DeployOptions", "DeployResult", "deploy"]
