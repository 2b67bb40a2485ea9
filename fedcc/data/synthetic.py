"""Synthetic(alpha, beta): the non-IID benchmark of FedProx (Li et al., MLSys 2020), section 5.1.

Client k draws its model and its inputs from priors that alpha and beta control:

- `u_k ~ N(0, alpha)`: client k's labelling model `W_k ~ N(u_k, 1)` (60 x 10) and
  `b_k ~ N(u_k, 1)` (10); alpha controls how much the models differ;
- `B_k ~ N(0, beta)`: client k's input mean `v_k ~ N(B_k, 1)` (60 values);
  beta controls how much the inputs differ;
- `x ~ N(v_k, Σ)` with `Σ` diagonal, `Σ_jj = j^-1.2`;
- `y = argmax(softmax(x W_k + b_k))`.

Sizes follow a power law, as in the paper's code: `n_k = floor(lognormal(4, 2)) + 50`.
`iid=True` gives the IID variant: one global model for all clients, and inputs
`N(B_k, Σ)` (every input mean `B_k`).
(N(m, s) is a normal of mean m and standard deviation s, as in the paper's code.)
"""

from __future__ import annotations

import numpy as np

from fedcc.data.client_data import ClientData, DataError

DIMENSION = 60
NUM_CLASSES = 10


def synthetic(
    alpha: float,
    beta: float,
    num_clients: int = 30,
    seed: int = 0,
    iid: bool = False,
    dimension: int = DIMENSION,
    num_classes: int = NUM_CLASSES,
) -> ClientData:
    """Synthetic(alpha, beta) for `num_clients` clients (see the module docstring); seeded."""
    if (
        isinstance(num_clients, bool)
        or not isinstance(num_clients, (int, np.integer))
        or (num_clients <= 0)
    ):
        raise DataError(f"num_clients must be a positive int, found {num_clients!r}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not np.isfinite(value) or value < 0:
            raise DataError(f"{name} must be a non-negative number, found {value!r}")
    rng = np.random.default_rng(seed)
    sizes = rng.lognormal(4, 2, num_clients).astype(np.int64) + 50
    model_means = rng.normal(0.0, alpha, num_clients)
    input_offsets = rng.normal(0.0, beta, num_clients)
    stddev = np.power(np.arange(1, dimension + 1, dtype=np.float64), -1.2 / 2)
    if iid:
        global_kernel = rng.normal(0.0, 1.0, (dimension, num_classes))
        global_bias = rng.normal(0.0, 1.0, num_classes)
    features, labels = [], []
    for client in range(num_clients):
        if iid:
            kernel, bias = global_kernel, global_bias
            input_mean = np.full(dimension, input_offsets[client])
        else:
            kernel = rng.normal(model_means[client], 1.0, (dimension, num_classes))
            bias = rng.normal(model_means[client], 1.0, num_classes)
            input_mean = rng.normal(input_offsets[client], 1.0, dimension)
        x = input_mean + stddev * rng.standard_normal((int(sizes[client]), dimension))
        # The argmax of the softmax is the argmax of the logits.
        y = np.argmax(x @ kernel + bias, axis=1)
        features.append(x.astype(np.float32))
        labels.append(y.astype(np.int32))
    return ClientData(tuple(features), tuple(labels), None)
