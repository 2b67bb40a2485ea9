"""`simplify-federated-projections`: placed values taken apart and zipped back are removed,
bit for bit. The FedAvg round of the learning library, at -O2, keeps the projections it
needs (the model sent to the clients, the aggregator state) and no other; random programs
from tests/strategies.py hit the rules (so the soundness tests exercise them)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from strategies import sample_programs
from test_passes_federated import awkward_value, check_rewrite

import fedcc as fc
from fedcc.compiler.pass_manager import level_passes
from fedcc.compiler.passes import get_pass
from fedcc.ir.analysis import count_intrinsic_calls
from fedcc.ir.building_blocks import Data, walk
from fedcc.learning import aggregators, models, optimizers

NAME = "simplify-federated-projections"

AGGREGATORS = {
    "mean": lambda: aggregators.mean(),
    "dp_mean": lambda: aggregators.dp_mean(0.5, 0.1, seed=3),
}


def test_the_pass_runs_at_level_2():
    assert NAME in level_passes(2) and NAME not in level_passes(1)


@pytest.mark.parametrize(("aggregator", "applies", "zips"), [("mean", 4, 3), ("dp_mean", 6, 5)])
def test_level_2_leaves_a_fedavg_round_only_the_projections_it_needs(aggregator, applies, zips):
    process = fc.learning.build_fed_avg(
        models.logistic_regression(6, 3),
        client_optimizer=optimizers.sgd(0.3),
        aggregator=AGGREGATORS[aggregator](),
    )
    optimized = fc.optimize(process["next"].building_block, 2)
    calls = count_intrinsic_calls(optimized)
    # Before this pass: 16 applies and 5 zips (mean), 21 and 6 (dp_mean).
    assert (calls["federated_apply"], calls["federated_zip"]) == (applies, zips)


SAMPLES = [
    comp
    for comp in sample_programs(200, seed=5, federated=True, max_depth=3, max_nodes=30)
    if not any(isinstance(node, Data) for node in walk(comp))
]


def test_random_programs_hit_the_rules_and_keep_their_bits():
    compiler_pass = get_pass(NAME)
    applied: Counter = Counter()
    for seed, comp in enumerate(SAMPLES):
        _, log = compiler_pass.apply_logged(comp)
        applied.update(log.counts())
        rng = np.random.default_rng(seed)
        check_rewrite(NAME, comp, [awkward_value(comp.parameter_type, rng, 3)])
    for pattern in ("ProjectionOfZip", "IdentityProjection", "ZipOfProjections"):
        assert applied[pattern] > 0, f"no random program hit {pattern}: {dict(applied)}"
