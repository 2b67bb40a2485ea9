"""Federated data (DESIGN §9): client data from arrays and folders, partitions, batches,
and the Synthetic(alpha, beta) generator of the FedProx paper."""

from __future__ import annotations

import numpy as np
import pytest

import fedcc as fc
from fedcc.data import DataError


def labelled(n: int = 200, d: int = 3, classes: int = 5, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.integers(0, classes, n)


# --- ClientData and arrays ----------------------------------------------------------------------


def test_from_arrays_holds_one_float32_features_and_int32_labels_array_a_client():
    data = fc.data.from_arrays([np.ones((3, 2)), np.zeros((1, 2))], [[0, 1, 2], [4]])
    assert data.num_clients == 2 and data.num_examples == [3, 1]
    assert data.client_ids == ("client_000", "client_001")
    assert data.features[0].dtype == np.float32 and data.labels[1].dtype == np.int32
    assert data.input_shape == (2,)
    assert data.client(1)["y"].tolist() == [4]
    with pytest.raises(ValueError):
        data.features[0][0, 0] = 5.0


@pytest.mark.parametrize(
    ("features", "labels", "message"),
    [
        ([np.ones((3, 2))], [[0, 1]], r"client 0: expected 3 labels \[examples\], found shape"),
        ([np.ones((3, 2))], [[0.5, 1, 2]], "labels are non-negative integers"),
        ([np.ones((3, 2))], [[0, -1, 2]], "labels are non-negative integers"),
        ([np.ones(3)], [[0, 1, 2]], r"features are a numeric array \[examples, ...\]"),
        ([np.ones((1, 2)), np.ones((1, 3))], [[0], [0]], "one shape"),
        ([np.ones((1, 2))], [[0], [1]], "one label array a client"),
    ],
)
def test_from_arrays_refuses_data_that_does_not_fit(features, labels, message):
    with pytest.raises(DataError, match=message):
        fc.data.from_arrays(features, labels)


def test_from_arrays_wants_one_array_a_client_not_one_array_for_all():
    x, y = labelled()
    with pytest.raises(DataError, match="partition_iid or partition_dirichlet"):
        fc.data.from_arrays(x, y)


def test_split_keeps_every_example_once_and_the_order_without_a_seed():
    data = fc.data.from_arrays([np.arange(20.0).reshape(10, 2)], [np.arange(10)])
    train, test = data.split(0.3)
    assert train.labels[0].tolist() == list(range(7)) and test.labels[0].tolist() == [7, 8, 9]
    shuffled_train, shuffled_test = data.split(0.3, seed=1)
    assert sorted([*shuffled_train.labels[0], *shuffled_test.labels[0]]) == list(range(10))
    assert shuffled_train.labels[0].tolist() != list(range(7))
    with pytest.raises(DataError, match=r"test_fraction must be in \[0, 1\)"):
        data.split(1.0)


# --- npz folders --------------------------------------------------------------------------------


def test_a_folder_of_npz_files_round_trips(tmp_path):
    x, y = labelled(30)
    data = fc.data.partition_iid(x, y, num_clients=3, seed=1)
    files = fc.data.save_npz_folder(data, tmp_path / "clients")
    assert [f.name for f in files] == ["client_000.npz", "client_001.npz", "client_002.npz"]
    with np.load(files[0]) as archive:
        assert sorted(archive.files) == ["x", "y"]
        assert archive["x"].dtype == np.float32 and archive["y"].dtype == np.int32
    loaded = fc.data.load_npz_folder(tmp_path / "clients")
    assert loaded.client_ids == data.client_ids
    for a, b in zip(loaded.features, data.features):
        assert a.tobytes() == b.tobytes()
    for a, b in zip(loaded.labels, data.labels):
        assert a.tobytes() == b.tobytes()


def test_reading_a_bad_folder_names_the_file(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        fc.data.load_npz_folder(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.npz files"):
        fc.data.load_npz_folder(tmp_path / "empty")
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "a.npz", x=np.ones((2, 3), np.float32), label=np.zeros(2, np.int32))
    with pytest.raises(
        DataError, match=r"a\.npz: expected the keys 'x' and 'y', found 'label', 'x'"
    ):
        fc.data.load_npz_folder(bad)
    (bad / "a.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"a\.npz: not a readable .npz file"):
        fc.data.load_npz_folder(bad)


def test_saving_refuses_a_folder_that_already_holds_clients(tmp_path):
    data = fc.data.from_arrays([np.ones((1, 2))], [[0]])
    fc.data.save_npz_folder(data, tmp_path)
    with pytest.raises(DataError, match=r"already holds \.npz files"):
        fc.data.save_npz_folder(data, tmp_path)


# --- partitions ---------------------------------------------------------------------------------


def every_example_once(data, x) -> bool:
    rows = np.concatenate(data.features)
    return len(rows) == len(x) and {r.tobytes() for r in rows} == {
        r.tobytes() for r in x.astype(np.float32)
    }


def test_iid_partition_deals_near_equal_shares_of_every_example():
    x, y = labelled(203)
    data = fc.data.partition_iid(x, y, num_clients=4, seed=3)
    assert sorted(data.num_examples) == [50, 51, 51, 51]
    assert every_example_once(data, x)
    again = fc.data.partition_iid(x, y, num_clients=4, seed=3)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(data.labels, again.labels))


def test_dirichlet_partition_skews_labels_more_as_alpha_shrinks():
    x, y = labelled(2000, classes=5)

    def mean_top_label_share(alpha: float) -> float:
        data = fc.data.partition_dirichlet(x, y, num_clients=10, alpha=alpha, seed=0)
        assert every_example_once(data, x)
        shares = [
            np.bincount(labels, minlength=5).max() / max(len(labels), 1) for labels in data.labels
        ]
        return float(np.mean(shares))

    skewed, balanced = mean_top_label_share(0.1), mean_top_label_share(100.0)
    assert skewed > 0.6 and balanced < 0.3


def test_partitions_refuse_bad_settings():
    x, y = labelled()
    with pytest.raises(DataError, match="num_clients must be a positive int"):
        fc.data.partition_iid(x, y, num_clients=0)
    with pytest.raises(DataError, match="alpha must be a positive number"):
        fc.data.partition_dirichlet(x, y, num_clients=3, alpha=0.0)
    with pytest.raises(DataError, match=r"expected 200 labels"):
        fc.data.partition_iid(x, y[:-1], num_clients=3)


# --- batches ------------------------------------------------------------------------------------


def test_batches_cut_each_client_in_order_with_a_short_last_batch():
    data = fc.data.from_arrays([np.arange(14.0).reshape(7, 2), np.ones((2, 2))], [range(7), [0, 1]])
    batches = fc.data.batches(data, 3)
    assert [[len(b["y"]) for b in client] for client in batches] == [[3, 3, 1], [2]]
    assert batches[0][1]["y"].tolist() == [3, 4, 5]
    assert batches[0][0]["x"].dtype == np.float32 and batches[0][0]["y"].dtype == np.int32


def test_seeded_batches_shuffle_each_epoch_reproducibly():
    data = fc.data.from_arrays([np.zeros((10, 1))], [range(10)])
    first = data.batches(4, seed=5, epochs=2)
    again = data.batches(4, seed=5, epochs=2)
    labels = [b["y"].tolist() for b in first[0]]
    assert labels == [b["y"].tolist() for b in again[0]]
    assert [len(b) for b in labels] == [4, 4, 2, 4, 4, 2]
    epoch_one = [label for batch in labels[:3] for label in batch]
    epoch_two = [label for batch in labels[3:] for label in batch]
    assert sorted(epoch_one) == sorted(epoch_two) == list(range(10))
    assert epoch_one != epoch_two and epoch_one != list(range(10))
    with pytest.raises(DataError, match="batch_size must be a positive int"):
        data.batches(0)


def test_batches_are_the_client_data_a_round_takes():
    data = fc.data.from_arrays([np.ones((5, 3)), np.ones((2, 3))], [[0] * 5, [1] * 2])

    @fc.federated_computation("{<x=float32[?,3],y=int32[?]>*}@CLIENTS")
    def count(client_data):
        @fc.numpy_computation("float32", "<x=float32[?,3],y=int32[?]>")
        def add(total, batch):
            return total + np.sum(np.ones_like(batch["y"])).astype(np.float32)

        return fc.federated_sum(
            fc.federated_map(
                lambda batches: fc.sequence_reduce(batches, np.float32(0), add), client_data
            )
        )

    assert float(count(data.batches(2))) == 7.0


# --- Synthetic(alpha, beta) ---------------------------------------------------------------------


def test_synthetic_has_the_fedprox_shape_and_power_law_sizes():
    data = fc.data.synthetic(1.0, 1.0, num_clients=30, seed=0)
    assert data.num_clients == 30 and data.input_shape == (60,)
    sizes = np.array(data.num_examples)
    assert sizes.min() >= 50 and sizes.max() > 4 * np.median(sizes)
    labels = np.concatenate(data.labels)
    assert labels.min() >= 0 and labels.max() <= 9 and len(np.unique(labels)) == 10


def test_synthetic_is_reproducible_from_its_seed():
    first = fc.data.synthetic(0.5, 0.5, num_clients=5, seed=11)
    again = fc.data.synthetic(0.5, 0.5, num_clients=5, seed=11)
    other = fc.data.synthetic(0.5, 0.5, num_clients=5, seed=12)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first.features, again.features))
    assert first.features[0].tobytes() != other.features[0].tobytes()


def test_synthetic_beta_moves_the_clients_inputs_apart():
    def spread_of_client_means(beta: float) -> float:
        data = fc.data.synthetic(0.0, beta, num_clients=20, seed=2)
        return float(np.std([x.mean() for x in data.features]))

    assert spread_of_client_means(10.0) > 3 * spread_of_client_means(0.0)


def test_synthetic_iid_labels_every_client_with_one_model():
    data = fc.data.synthetic(0.0, 0.0, num_clients=6, seed=3, iid=True)
    # One global linear model labels everything, so one linear model fits all clients.
    x = np.concatenate(data.features).astype(np.float64)
    y = np.concatenate(data.labels)
    assert x.shape[1] == 60
    # The labels of the IID variant are the argmax of one affine map: the classes are
    # linearly separable, so least squares on one-hot targets already beats chance by far.
    design = np.hstack([x, np.ones((len(x), 1))])
    fit, *_ = np.linalg.lstsq(design, np.eye(10)[y], rcond=None)
    assert np.mean(np.argmax(design @ fit, axis=1) == y) > 0.5


def test_synthetic_refuses_bad_settings():
    with pytest.raises(DataError, match="alpha must be a non-negative number"):
        fc.data.synthetic(-1.0, 0.0)
    with pytest.raises(DataError, match="num_clients must be a positive int"):
        fc.data.synthetic(0.0, 0.0, num_clients=0)
