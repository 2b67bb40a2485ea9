"""Average temperature across sensors: each sensor (a client) holds one reading.

Compile it with `fedcc compile examples.sensor_average:mean_temperature -o t.pb`;
run it here with `python examples/sensor_average.py`.
"""

from __future__ import annotations

import numpy as np

import fedcc as fc


@fc.federated_computation("{float32}@CLIENTS")
def mean_temperature(readings):
    """The mean of the sensors' readings, at the server."""
    return fc.federated_mean(readings)


def sensor_readings(num_sensors: int, seed: int = 0) -> list[np.float32]:
    """Temperatures around 20 degrees, one a sensor."""
    rng = np.random.default_rng(seed)
    return [np.float32(t) for t in rng.normal(20.0, 3.0, size=num_sensors)]


def main() -> None:
    readings = sensor_readings(10)
    print(f"mean temperature of {len(readings)} sensors: {mean_temperature(readings):.4f}")


if __name__ == "__main__":
    main()
