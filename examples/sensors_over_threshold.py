"""The fraction of sensors whose reading is over a threshold the server broadcasts.

The server broadcasts the threshold, each sensor (a client) maps its reading
to 1.0 or 0.0, and the server averages those.
Run it with `python examples/sensors_over_threshold.py`.
"""

from __future__ import annotations

import numpy as np

import fedcc as fc


@fc.numpy_computation("float32", "float32")
def is_over(reading, threshold):
    """1.0 if `reading` is over `threshold`, else 0.0."""
    return (reading > threshold).astype(np.float32)


@fc.federated_computation("{float32}@CLIENTS", "float32@SERVER")
def fraction_over_threshold(readings, threshold):
    """The fraction of the clients' readings that are over the server's threshold."""
    threshold_at_clients = fc.federated_broadcast(threshold)
    return fc.federated_mean(fc.federated_map(is_over, [readings, threshold_at_clients]))


def sensor_readings(num_sensors: int, seed: int = 0) -> list[np.float32]:
    """Temperatures around 20 degrees, one a sensor."""
    rng = np.random.default_rng(seed)
    return [np.float32(t) for t in rng.normal(20.0, 3.0, size=num_sensors)]


def main() -> None:
    readings = sensor_readings(20)
    threshold = np.float32(21.0)
    fraction = fraction_over_threshold(readings, threshold)
    print(f"fraction of {len(readings)} sensors over {threshold}: {fraction:.4f}")


if __name__ == "__main__":
    main()
