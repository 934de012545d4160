"""`hps-surgeon check`: the pre-commit gate. Reads graphs, file sizes, key files and the first
64 KiB of each table's vectors (README "Security"); never external data.

With an `EngineOptions` (`--engine`), each rewritten model that passes is also parsed and built by
the installed NVIDIA builder with our plugin (TensorRT-RTX needs no GPU); its problems join the rest.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .api import scan
from .errors import Problem, SurgeonError, errors
from .hps import validate
from .hps.contract import CONFIG_NAME
from .load import read_proto

if TYPE_CHECKING:
    from .deploy.engine import EngineOptions


def check_models(models: list[str], config: str | None = None, require_rewritten: bool = False,
                 max_table_mb: float = 0.0, engine: EngineOptions | None = None) -> list[Problem]:
    """Every problem of every model, one `Problem` each; an unreadable model is a problem too.

    Raises SurgeonError when `engine` is given but no builder or plugin library can be used.
    """
    if engine is not None:
        from .deploy.engine import ready

        ready(engine)
    problems: list[Problem] = []
    for model in models:
        problems += _check_one(Path(model), config, require_rewritten, max_table_mb, engine)
    return problems


def _check_one(path: Path, config: str | None, require_rewritten: bool, max_table_mb: float,
               engine: EngineOptions | None) -> list[Problem]:
    try:
        # scan loads and checks the file (external-data locations included) without reading tables
        proto = read_proto(path)
        lookups = scan(path).lookups if require_rewritten else None
        config_path = Path(config) if config else _config_beside(path)
        if config_path is not None and config_path.exists() and not config_path.is_file():
            # a FIFO would block the hook forever, a folder cannot be read
            return [Problem(str(config_path), "(file)", "not a regular file — pass the hps_config.json that "
                                                         "rewrite wrote")]
        problems = validate.validate(path, config_path, model=proto)
    except SurgeonError as exc:
        return [Problem(str(path), "(file)", str(exc).removeprefix(f"{path}: "))]
    for lookup in lookups or []:
        if lookup.nbytes > max_table_mb * (1 << 20):
            problems.append(Problem(str(path), lookup.node, f"embedding lookup of table '{lookup.table}' "
                                    f"({lookup.nbytes / (1 << 20):.1f} MiB) is not rewritten into HPS_TRT — "
                                    "run hps-surgeon rewrite"))
    if engine is not None and not errors(problems) and validate.hps_nodes(proto):
        if config_path is None:
            return problems + [Problem(str(path), "(engine)", "no HPS config to size the engine's batch with — "
                                       f"pass --config or keep {CONFIG_NAME} beside the model")]
        from .deploy.engine import check_engine

        problems += check_engine(path, config_path, engine)
    return problems


def _config_beside(model: Path) -> Path | None:
    candidate = model.parent / CONFIG_NAME
    return candidate if candidate.is_file() else None
