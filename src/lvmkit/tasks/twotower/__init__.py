"""The two-tower retrieval task: config.py (the typed ``twotower:`` section), spec.py (what every consumer
asks), task.py (training), loss.py, docbank.py (the document side), mining.py (glue to the hard-negative
miner), evaluate.py (the tower beside the heuristics)."""

from lvmkit.tasks.twotower.config import TwoTowerConfig, TwoTowerRunConfig
from lvmkit.tasks.twotower.spec import TWOTOWER_SPEC, TwoTowerSpec

__all__ = ["TwoTowerConfig", "TwoTowerRunConfig", "TwoTowerSpec", "TWOTOWER_SPEC"]
