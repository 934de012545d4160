"""`hps-surgeon doctor`: every probe, then what works on this machine, as one screen or as JSON."""

from __future__ import annotations

import sys
from dataclasses import dataclass

from .. import __version__
from . import probes
from .probes import OK, PARTIAL, Finding


@dataclass(frozen=True)
class Capability:
    """A group of commands and whether this machine runs them (else what they lack)."""

    commands: str
    works: bool
    lacking: tuple[str, ...]


@dataclass(frozen=True)
class Diagnosis:
    findings: tuple[Finding, ...]
    capabilities: tuple[Capability, ...]

    def as_json(self) -> dict:
        return {"hps_surgeon": __version__, "python": sys.executable,
                "findings": [{"name": f.name, "status": f.status, "summary": f.summary, "fix": f.fix, **f.facts}
                             for f in self.findings],
                "works": [{"commands": c.commands, "works": c.works, "lacking": list(c.lacking)}
                          for c in self.capabilities]}


def diagnose() -> Diagnosis:
    deps = probes.python_dependencies()
    plugin = probes.plugin_library()
    storage = probes.storage_library()
    gpus = probes.gpus()
    builders = probes.builders()
    databases = probes.databases(storage)
    findings = (deps, plugin, storage, gpus, builders, databases, probes.polygraphy_extension(), probes.toolchain())
    glue = plugin.ok
    loads = plugin.status in (OK, PARTIAL)
    full_trt = "tensorrt" in builders.facts.get("builders", {})

    def needs(commands: str, *parts: tuple[str, bool]) -> Capability:
        lacking = tuple(name for name, there in (("python deps", deps.ok), *parts) if not there)
        return Capability(commands, not lacking, lacking)

    capabilities = (
        needs("scan, rewrite, check, verify (reference backend), deploy"),
        needs("verify --backend native, polygraphy run --hps --hps-backend native",
              ("libhps_plugin.so", loads), ("a GPU the plugin has code for", gpus.ok)),
        needs("build-engine, check --engine", ("libhps_plugin.so with TensorRT glue", glue),
              ("tensorrt or tensorrt_rtx", builders.status in (OK, PARTIAL))),
        needs("deploy --build-engine", ("libhps_plugin.so with TensorRT glue", glue), ("tensorrt", full_trt),
              ("a GPU", gpus.status in (OK, PARTIAL))),
        needs("publish (RocksDB; Redis Cluster at --volatile-db)", ("libhps_storage.so", storage.ok)),
        needs("build-native", ("its toolchain", findings[-1].ok)),
    )
    return Diagnosis(findings, capabilities)


def render(diagnosis: Diagnosis) -> str:
    """One screen: a line per part (its fix indented below when not ok), then what works here."""
    width = max(len(f.name) for f in diagnosis.findings)
    lines = [f"hps-surgeon {__version__} doctor ({sys.executable})", ""]
    for f in diagnosis.findings:
        lines.append(f"  {f.status:<8} {f.name:<{width}}  {f.summary}")
        if f.fix:
            lines.append(f"  {'':<8} {'':<{width}}  fix: {f.fix}")
    lines += ["", "What works here:"]
    for c in diagnosis.capabilities:
        lines.append(f"  {'yes' if c.works else 'no':<4} {c.commands}"
                     + ("" if c.works else f"  (needs {', '.join(c.lacking)})"))
    return "\n".join(lines) + "\n"
