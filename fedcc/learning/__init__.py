"""The learning library (DESIGN §9): models, optimizers, aggregators, FedAvg, FedSGD, evaluation.

Built only from fedcc's public API, as TFF's learning layer is built on its
Federated Core: `build_fed_avg` returns an `IterativeProcess` whose
`initialize` and `next` are ordinary computations, saved with `fc.save` and
run on any backend.
"""

from fedcc.learning import aggregators, models, optimizers
from fedcc.learning.errors import LearningSettingError
from fedcc.learning.fed_avg import build_fed_avg, build_fed_sgd
from fedcc.learning.fed_eval import build_fed_eval
from fedcc.learning.iterative_process import (
    CheckpointError,
    IterativeProcess,
    load_state,
    save_state,
)

__all__ = [
    "CheckpointError",
    "IterativeProcess",
    "LearningSettingError",
    "aggregators",
    "build_fed_avg",
    "build_fed_eval",
    "build_fed_sgd",
    "load_state",
    "models",
    "optimizers",
    "save_state",
]
