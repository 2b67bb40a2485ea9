"""Federated data (DESIGN §9): client examples, files, partitions, batches, Synthetic(alpha, beta).

`ClientData` holds each client's features and labels; `from_arrays` and
`load_npz_folder` make it, `partition_iid` and `partition_dirichlet` split one
data set among clients, `synthetic` generates the FedProx benchmark, and
`batches` turns it into the client data a round takes: a list, one entry a
client, of lists of `{"x", "y"}` batches.
"""

from fedcc.data.batching import batches
from fedcc.data.client_data import ClientData, DataError, from_arrays
from fedcc.data.npz_folder import load_npz_folder, save_npz_folder
from fedcc.data.partitioning import partition_dirichlet, partition_iid
from fedcc.data.synthetic import synthetic

__all__ = [
    "ClientData",
    "DataError",
    "batches",
    "from_arrays",
    "load_npz_folder",
    "partition_dirichlet",
    "partition_iid",
    "save_npz_folder",
    "synthetic",
]
