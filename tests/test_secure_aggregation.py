"""Secure sums on the `processes` backend: pairwise additive masking of the shards' sums.

The protocol is in runtimes/secure_aggregation.py.


- The results are the reference backend's bits, for both secure-sum
  intrinsics, scalar and struct bounds, every integer dtype, 1/2/3/7 workers,
  and a FedAvg round with `aggregators.secure_mean`.
- What the server received: every frame the server decodes is captured (by
  wrapping `wire.decode`, which `runtimes/processes.py` calls on each answer),
  and no worker's partial sum and no client's value is among them; each
  masked input looks uniform modulo 2**128, the masked inputs still add up to
  the total, and two runs on the same inputs receive different values.
- Range and overflow errors are the reference's.
- A worker lost during a masked sum is a `BackendError` naming it; with
  `retries` the sum starts over with fresh keys and gives the same bits.
- The arithmetic and key agreement on their own.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
from backend_checks import WorkerLedger, fingerprint, outcome

import fedcc as fc
from fedcc.ir.building_blocks import Lambda, Literal, Reference, Struct, call_intrinsic
from fedcc.ir.errors import BackendError
from fedcc.ir.type_text import parse_type
from fedcc.learning import aggregators, models, optimizers
from fedcc.runtimes import get_backend, run, secure_aggregation, wire
from fedcc.runtimes.backend import Aggregation
from fedcc.runtimes.processes import ProcessesBackend
from fedcc.runtimes.secure_aggregation import (
    GROUP_PRIME,
    LIMBS,
    MaskKey,
    add_limbs,
    limbs_to_ints,
    subtract_limbs,
    to_limbs,
)
from fedcc.runtimes.shard import MaskedSumRequest, MaskKeyRequest, split_contiguous

WORKER_COUNTS = (1, 2, 3, 7)
CLIENT_COUNTS = (1, 5, 13)
MODULUS = 1 << 128
# Per dtype: a max_input and a bitwidth small enough that 13 clients never overflow.
DTYPE_BOUNDS = {
    "int8": (9, 3),
    "int16": (2000, 11),
    "int32": (10**8, 27),
    "int64": (2**59, 59),
    "uint8": (19, 4),
    "uint16": (5000, 12),
    "uint32": (3 * 10**8, 28),
    "uint64": (2**60, 60),
}
SHAPES = {"int8": (3,), "int16": (), "int32": (2, 2), "int64": (5,), "uint8": (), "uint16": (2,),
          "uint32": (), "uint64": (3,)}
BOUND_SECONDS = 20.0
WORKERS = WorkerLedger()
remember = WORKERS.remember


@pytest.fixture(scope="module")
def backends():
    """One processes backend a worker count, shared by the module's tests."""
    made = {workers: get_backend("processes", workers=workers) for workers in WORKER_COUNTS}
    yield made
    for backend in made.values():
        remember(backend)
        backend.close()


@pytest.fixture(scope="module", autouse=True)
def no_processes_left_behind():
    yield
    WORKERS.assert_all_gone(BOUND_SECONDS)


def secure_sum(member: str, bound, uri: str = "federated_secure_sum") -> Lambda:
    t = parse_type("{" + member + "}@CLIENTS")
    x = Reference("x", t)
    return Lambda("x", t, call_intrinsic(uri, Struct([x, bound])))


def random_values(rng, clients, dtypes, uri, low=0):
    """One struct a client: per dtype a tensor of SHAPES[dtype] in [low, its bound]."""
    values = []
    for _ in range(clients):
        value = []
        for dtype in dtypes:
            largest = _largest(dtype, uri)
            drawn = rng.integers(low, largest, SHAPES[dtype], dtype=np.uint64, endpoint=True)
            value.append(np.asarray(drawn).astype(dtype))
        values.append(tuple(value))
    return values


def _largest(dtype: str, uri: str) -> int:
    max_input, bitwidth = DTYPE_BOUNDS[dtype]
    return max_input if uri == "federated_secure_sum" else 2**bitwidth - 1


def bound_literal(dtype: str, uri: str) -> Literal:
    max_input, bitwidth = DTYPE_BOUNDS[dtype]
    given = max_input if uri == "federated_secure_sum" else bitwidth
    return Literal(np.dtype(dtype).type(given))


def struct_member(dtypes) -> str:
    def leaf(dtype):
        shape = SHAPES[dtype]
        return dtype + (f"[{','.join(map(str, shape))}]" if shape else "")

    return "<" + ",".join(leaf(dtype) for dtype in dtypes) + ">"


URIS = ("federated_secure_sum", "federated_secure_sum_bitwidth")


# --- the reference backend's bits ----------------------------------------------------------------


@pytest.mark.parametrize("uri", URIS)
@pytest.mark.parametrize("clients", CLIENT_COUNTS)
def test_struct_bounds_over_every_integer_dtype_give_the_reference_bits(backends, uri, clients):
    dtypes = list(DTYPE_BOUNDS)
    comp = secure_sum(struct_member(dtypes), Struct([bound_literal(d, uri) for d in dtypes]), uri)
    values = random_values(np.random.default_rng(clients), clients, dtypes, uri)
    expected = outcome(comp, values, backend="reference")
    assert expected[0] == "value"
    for workers, backend in backends.items():
        assert outcome(comp, values, backend=backend) == expected, workers


@pytest.mark.parametrize("uri", URIS)
@pytest.mark.parametrize("dtype", list(DTYPE_BOUNDS))
def test_a_scalar_bound_for_a_struct_gives_the_reference_bits(backends, uri, dtype):
    # One scalar bound stands for both leaves; the values reach the top of the range.
    comp = secure_sum(f"<{dtype}[4],{dtype}>", bound_literal(dtype, uri), uri)
    rng = np.random.default_rng(7)
    largest = _largest(dtype, uri)
    values = [
        (np.full(4, largest, dtype) if k % 3 == 0 else rng.integers(0, largest, 4).astype(dtype),
         np.dtype(dtype).type(rng.integers(0, largest)))
        for k in range(13)
    ]
    expected = outcome(comp, values, backend="reference")
    assert expected[0] == "value"
    for workers, backend in backends.items():
        assert outcome(comp, values, backend=backend) == expected, workers


def test_a_uint64_total_above_two_to_the_63_is_exact(backends):
    comp = secure_sum("uint64[2]", Literal(np.uint64(2**64 - 1)))
    values = [np.array([2**61 + k, 2**64 // 8 - 1], np.uint64) for k in range(7)]
    expected = outcome(comp, values, backend="reference")
    assert expected[0] == "value"
    total = run(comp, values, backend="reference")
    assert int(total[0]) == 7 * 2**61 + 21 > 2**63
    for workers, backend in backends.items():
        assert outcome(comp, values, backend=backend) == expected, workers


def fedavg_with_secure_mean(clients: int):
    model = models.logistic_regression(6, 3)
    process = fc.learning.build_fed_avg(
        model, client_optimizer=optimizers.sgd(0.1), aggregator=aggregators.secure_mean(16)
    )
    rng = np.random.default_rng(clients)
    data = [
        [{"x": rng.normal(size=(4, 6)).astype(np.float32),
          "y": rng.integers(0, 3, 4).astype(np.int32)} for _ in range(1 + k % 3)]
        for k in range(clients)
    ]
    return process, data


def test_fed_avg_with_secure_mean_gives_the_reference_bits(backends):
    process, data = fedavg_with_secure_mean(11)
    state = process.initialize()
    expected = outcome(process.next, state, data, backend="reference")
    assert expected[0] == "value"
    for workers, backend in backends.items():
        before = backend.statistics()["secure_sums"]
        assert outcome(process.next, state, data, backend=backend) == expected, workers
        # The round's secure sum went through the masked protocol.
        assert backend.statistics()["secure_sums"] == before + 1


# --- what the server received ---------------------------------------------------------------


class ServerView:
    """Every message the server decodes from workers while installed (it wraps `wire.decode`).

    `runtimes/processes.py` decodes each worker's answer with `wire.decode`;
    workers are separate processes, so they keep the original.
    """

    def __init__(self, monkeypatch) -> None:
        self.messages: list = []
        decode = wire.decode

        def recording_decode(data, **options):
            message = decode(data, **options)
            self.messages.append(message)
            return message

        monkeypatch.setattr(wire, "decode", recording_decode)

    def answers(self) -> list:
        return [m.value for m in self.messages if isinstance(m, wire.Answer)]

    def clear(self) -> None:
        self.messages.clear()


def is_masked_input(value) -> bool:
    return (
        type(value) is tuple
        and len(value) > 0
        and all(isinstance(v, np.ndarray) and v.dtype == np.uint64 and v.shape[-1:] == (LIMBS,)
                for v in value)
    )


def exact_sum(values) -> list[int]:
    total = None
    for value in values:
        flat = [int(x) for x in np.asarray(value).reshape(-1)]
        total = flat if total is None else [a + b for a, b in zip(total, flat, strict=True)]
    return total


@pytest.mark.parametrize("workers", [2, 3, 7])
def test_the_server_receives_only_uniform_masked_inputs_that_add_up_to_the_total(
    backends, monkeypatch, workers
):
    clients = 20
    comp = secure_sum("<int32[300],uint8>", Struct([Literal(np.int32(1000)), Literal(np.uint8(9))]))
    rng = np.random.default_rng(workers)
    values = [(rng.integers(0, 1001, 300).astype(np.int32), np.uint8(rng.integers(0, 10)))
              for _ in range(clients)]
    backend = backends[workers]
    expected = run(comp, values, backend="reference")
    view = ServerView(monkeypatch)
    assert fingerprint(run(comp, values, backend=backend)) == fingerprint(expected)

    answers = view.answers()
    # Placing and the map answer nothing; the key exchange answers public keys; the
    # secure sum, masked inputs. Nothing else reached the server.
    keys = [a for a in answers if type(a) is bytes]
    masked = [a for a in answers if is_masked_input(a)]
    assert all(a is None or type(a) is bytes or is_masked_input(a) for a in answers)
    assert len(keys) == len(masked) == workers
    assert all(len(key) == secure_aggregation.PUBLIC_KEY_BYTES for key in keys)

    bounds = split_contiguous(clients, workers)
    received_numbers: list[int] = []
    for leaf in range(2):
        partials = [exact_sum(values[a][leaf] for a in range(start, stop))
                    for start, stop in bounds]
        client_values = {tuple(int(x) for x in np.asarray(v[leaf]).reshape(-1)) for v in values}
        received = [limbs_to_ints(m[leaf]) for m in masked]
        for k, (numbers, partial) in enumerate(zip(received, partials, strict=True)):
            # No worker's partial sum, nor any client's value, element by element or whole.
            assert all(n != p for n, p in zip(numbers, partial, strict=True)), (leaf, k)
            assert tuple(numbers) not in client_values
            # Uniform modulo 2**128: no small values (each is below 2**64 with probability 2**-64).
            assert min(numbers) >= 1 << 64, (leaf, k)
            received_numbers.extend(numbers)
        # The masks cancel: the received inputs add up to the true total, modulo 2**128.
        sums = [sum(column) % MODULUS for column in zip(*received, strict=True)]
        assert sums == [sum(column) for column in zip(*partials, strict=True)]
    # About half of the elements have the top bit set, and about half of all bits are set.
    top = sum(n >> 127 for n in received_numbers) / len(received_numbers)
    assert 0.4 < top < 0.6, top
    ones = sum(bin(n).count("1") for n in received_numbers) / len(received_numbers)
    assert 62 < ones < 66, ones

    # The same inputs again: fresh keys and nonce, so other public keys and masked inputs.
    view.clear()
    assert fingerprint(run(comp, values, backend=backend)) == fingerprint(expected)
    again = view.answers()
    assert not {a for a in again if type(a) is bytes} & set(keys)
    masked_again = [a for a in again if is_masked_input(a)]
    for first, second in zip(masked, masked_again, strict=True):
        assert not np.array_equal(first[0], second[0])


def test_with_one_worker_the_server_receives_the_total_which_is_the_output(backends, monkeypatch):
    # With no peer there is nothing to mask with; what the server receives is the sum it
    # is meant to learn anyway.
    comp = secure_sum("int32[3]", Literal(np.int32(10)))
    values = [np.array([1, 2, 3], np.int32), np.array([4, 5, 6], np.int32)]
    view = ServerView(monkeypatch)
    result = run(comp, values, backend=backends[1])
    (masked,) = [a for a in view.answers() if is_masked_input(a)]
    assert limbs_to_ints(masked[0]) == [int(x) for x in result] == [5, 7, 9]


# --- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("member", "bound", "values", "uri"),
    [
        ("int32[2]", Literal(np.int32(10)), [[1, 2], [10, 0], [3, 3], [11, 0], [1, 1]],
         "federated_secure_sum"),
        ("int32[2]", Literal(np.int32(10)), [[1, 2], [1, 0], [3, 3], [1, 0], [-1, 1]],
         "federated_secure_sum"),
        ("<int32,int64>", Struct([Literal(np.int32(3)), Literal(np.int32(4))]),
         [(7, 15), (1, 0), (2, 3), (7, 16)], "federated_secure_sum_bitwidth"),
        ("uint8", Literal(np.uint8(200)), [100, 100, 50, 10, 0, 3, 0], "federated_secure_sum"),
        ("uint8", Literal(np.uint8(200)), [200, 100], "federated_secure_sum"),
        ("int32", Literal(np.int32(2**31 - 1)), [2**31 - 1, 0, 0, 1], "federated_secure_sum"),
        ("<int16,uint64>", Struct([Literal(np.int16(2**15 - 1)), Literal(np.uint64(2**64 - 1))]),
         [(1, 2**63), (1, 2**62), (1, 2**62), (1, 1)], "federated_secure_sum"),
    ],
)
def test_range_and_overflow_errors_are_the_references(backends, member, bound, values, uri):
    comp = secure_sum(member, bound, uri)
    expected = outcome(comp, values, backend="reference")
    assert expected[0] == "error"
    assert "outside the range" in expected[2] or "the sum overflows" in expected[2]
    for workers, backend in backends.items():
        found = outcome(comp, values, backend=backend)
        # The same error; one raised on a worker also says which worker and clients.
        assert found[0] == "error" and found[1] is expected[1], (workers, found)
        assert expected[2] in found[2], (workers, expected[2], found[2])


# --- faults --------------------------------------------------------------------------------------


def before_requests(backend, kind, action):
    """Calls `action()` once, just before the backend sends its first request of `kind`."""
    serve = backend._serve
    done = []

    def hooked(session, requests, *args, **options):
        if not done and isinstance(requests[0], kind):
            done.append(True)
            action()
        return serve(session, requests, *args, **options)

    backend._serve = hooked
    return done


def kill_worker(backend: ProcessesBackend, index: int) -> None:
    process = backend._slots[index].process
    process.kill()
    process.wait(BOUND_SECONDS)


def stop_then_kill(backend: ProcessesBackend, index: int) -> threading.Timer:
    # Stopped now, so that it is still serving the masked sum when it is killed.
    pid = backend._slots[index].pid
    os.kill(pid, signal.SIGSTOP)
    timer = threading.Timer(0.3, os.kill, (pid, signal.SIGKILL))
    timer.start()
    return timer


def fault_program():
    comp = secure_sum("int64[50]", Literal(np.int64(10**6)))
    rng = np.random.default_rng(3)
    values = [rng.integers(0, 10**6, 50) for _ in range(9)]
    return comp, values


@pytest.mark.parametrize("when", ["before the key exchange", "between key exchange and sum",
                                  "during the masked sum"])
def test_a_worker_lost_in_a_masked_sum_is_a_backend_error_naming_it(when):
    comp, values = fault_program()
    expected = run(comp, values, backend="reference")
    with remember(ProcessesBackend(workers=3)) as backend:
        assert fingerprint(run(comp, values, backend=backend)) == fingerprint(expected)
        timers = []
        if when == "before the key exchange":
            before_requests(backend, MaskKeyRequest, lambda: kill_worker(backend, 1))
        elif when == "between key exchange and sum":
            before_requests(backend, MaskedSumRequest, lambda: kill_worker(backend, 1))
        else:
            before_requests(
                backend, MaskedSumRequest, lambda: timers.append(stop_then_kill(backend, 1))
            )
        started = time.monotonic()
        with pytest.raises(BackendError, match=r"worker 1 \(pid \d+\) .*clients \[3, 6\)"):
            run(comp, values, backend=backend)
        assert time.monotonic() - started < BOUND_SECONDS
        for timer in timers:
            timer.join()
        remember(backend)
        # The pool works afterwards.
        assert fingerprint(run(comp, values, backend=backend)) == fingerprint(expected)
        remember(backend)


def test_a_lost_masked_input_says_no_sum_was_computed():
    comp, values = fault_program()
    with remember(ProcessesBackend(workers=3)) as backend:
        run(comp, values, backend=backend)
        timers: list = []
        before_requests(
            backend, MaskedSumRequest, lambda: timers.append(stop_then_kill(backend, 2))
        )
        with pytest.raises(BackendError) as caught:
            run(comp, values, backend=backend)
        for timer in timers:
            timer.join()
        message = str(caught.value)
        assert "worker 2" in message and "masked federated_secure_sum" in message
        assert "no sum was computed" in message
        remember(backend)


@pytest.mark.parametrize("when", ["between key exchange and sum", "during the masked sum"])
def test_with_retries_a_lost_masked_sum_starts_over_with_fresh_keys_bit_for_bit(
    monkeypatch, when
):
    comp, values = fault_program()
    expected = run(comp, values, backend="reference")
    with remember(ProcessesBackend(workers=3, retries=1)) as backend:
        run(comp, values, backend=backend)
        remember(backend)
        timers: list = []
        if when == "between key exchange and sum":
            before_requests(backend, MaskedSumRequest, lambda: kill_worker(backend, 0))
        else:
            before_requests(
                backend, MaskedSumRequest, lambda: timers.append(stop_then_kill(backend, 0))
            )
        view = ServerView(monkeypatch)
        assert fingerprint(run(comp, values, backend=backend)) == fingerprint(expected)
        for timer in timers:
            timer.join()
        statistics = backend.statistics()
        assert statistics["restarts"] == 1
        # Two key exchanges: the second with fresh keys on every worker.
        keys = [a for a in view.answers() if type(a) is bytes]
        assert len(keys) >= 3 + 3 and len(set(keys)) == len(keys)
        remember(backend)


# --- the arithmetic and the key agreement on their own ------------------------------------------


def test_limbs_add_and_subtract_modulo_two_to_the_128():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 2**64, (500, 2), dtype=np.uint64, endpoint=False)
    b = rng.integers(0, 2**64, (500, 2), dtype=np.uint64, endpoint=False)
    a[:5] = np.uint64(2**64 - 1)  # carries and borrows through both limbs
    b[:3] = np.uint64(0)
    ints_a, ints_b = limbs_to_ints(a), limbs_to_ints(b)
    assert limbs_to_ints(add_limbs(a, b)) == [(x + y) % MODULUS for x, y in zip(ints_a, ints_b)]
    differences = [(x - y) % MODULUS for x, y in zip(ints_a, ints_b)]
    assert limbs_to_ints(subtract_limbs(a, b)) == differences
    big = np.array([2**64 - 1, 2**63], np.uint64)
    assert limbs_to_ints(to_limbs(big)) == [2**64 - 1, 2**63]


@pytest.mark.parametrize("parties", [1, 2, 5])
def test_masks_of_every_party_cancel_in_the_sum(parties):
    aggregation = Aggregation("federated_secure_sum", "bounded_sum", parse_type("<int64[6],uint8>"),
                              bounds=(10**6, 9))
    keys = [MaskKey.generate() for _ in range(parties)]
    public = tuple(key.public for key in keys)
    nonce = os.urandom(secure_aggregation.NONCE_BYTES)
    partials = [(np.arange(6, dtype=np.int64) * (k + 1), np.uint8(k)) for k in range(parties)]
    masked = [secure_aggregation.masked_input(aggregation, [partials[k]], keys[k], k, public, nonce)
              for k in range(parties)]
    total = secure_aggregation.unmask(aggregation, masked, [f"party {k}" for k in range(parties)])
    np.testing.assert_array_equal(total[0], sum(p[0] for p in partials))
    assert type(total[1]) is np.uint8 and total[1] == sum(range(parties))
    if parties > 1:
        # Without the last party's input the masks do not cancel: what is left is uniform
        # modulo 2**128, which the server refuses as an overflow, never a wrong sum.
        with pytest.raises(BackendError, match="the sum overflows int64"):
            secure_aggregation.unmask(aggregation, masked[:-1], ["party"] * (parties - 1))


def test_the_two_ends_of_a_pair_derive_the_same_key_and_others_do_not():
    a, b, c = (MaskKey.generate() for _ in range(3))
    nonce = b"\x01" * secure_aggregation.NONCE_BYTES
    ab = secure_aggregation.pair_key(a, b.public, nonce, a.public, b.public)
    assert ab == secure_aggregation.pair_key(b, a.public, nonce, a.public, b.public)
    assert ab != secure_aggregation.pair_key(c, b.public, nonce, c.public, b.public)
    other_nonce = b"\x02" * secure_aggregation.NONCE_BYTES
    assert ab != secure_aggregation.pair_key(a, b.public, other_nonce, a.public, b.public)
    assert str(a.private) not in repr(a)


@pytest.mark.parametrize("element", [0, 1, GROUP_PRIME - 1, GROUP_PRIME])
def test_public_keys_outside_the_group_are_refused(element):
    bad = element.to_bytes(secure_aggregation.PUBLIC_KEY_BYTES, "big")
    with pytest.raises(BackendError, match="not an element of the group"):
        secure_aggregation.check_public_key(bad, "worker 3")
    with pytest.raises(BackendError, match="should be 256 bytes, found 3 bytes"):
        secure_aggregation.check_public_key(b"abc", "worker 3")
