"""Pairwise additive masking of secure sums (Bonawitz et al., CCS 2017), one party a shard.

The arithmetic and cryptography of the `processes` backend's secure sums; the
backend (runtimes/processes.py) runs the protocol, and each shard
(runtimes/shard.py) computes its masked input. For one secure-sum
aggregation over the shards 0..W-1:

1. Key agreement. Shard k draws a fresh Diffie-Hellman key pair in the
   2048-bit MODP group of RFC 3526 (group 14, generator 2) with a 256-bit
   private exponent from `secrets` (`MaskKey.generate`), and sends the server
   only its public key. The server relays all W public keys to every shard.
   Shards j < k share the secret g^(x_j x_k) mod p, which the server, seeing
   only g^x_j and g^x_k, cannot compute (computational Diffie-Hellman).
2. Masks. From that secret, the aggregation's fresh nonce and the two public
   keys, BLAKE2b derives a pair key (`pair_key`); SHAKE-256 of the pair key
   and a tensor leaf's index is that leaf's mask stream: one uniform number
   modulo M = 2**128 an element (`mask_stream`).
3. Masked input. Shard k sends its partial sum s_k (the exact sum of its
   clients' values, each checked to be in [0, bound] on the shard), plus
   the masks it shares with every j > k, minus those it shares with every
   j < k, modulo M (`masked_input`), as two uint64 limbs an element.
4. Unmasking. The server adds the W masked inputs modulo M: every mask is
   added once and subtracted once, so what is left is exactly sum_k s_k
   (`unmask`). Values are non-negative and below 2**64, so with fewer than
   2**64 clients that sum is below M and is the exact integer total: it is
   compared with the dtype's largest value (the reference backend's overflow
   error) and converted, bit-identical to the reference backend's tree sum.

The modulus is 2**128 rather than the dtype's range so that the server can
tell a total that overflows the dtype from one that does not, as the
reference backend does, instead of wrapping silently.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedcc.ir.errors import BackendError
from fedcc.ir.types import TensorType, tensor_leaves
from fedcc.runtimes import structure
from fedcc.runtimes.aggregations import overflow_error
from fedcc.runtimes.backend import Aggregation

# RFC 3526, section 3: the 2048-bit MODP group (group 14), a safe prime p = 2q + 1.
GROUP_PRIME = int(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74"
    "020BBEA63B139B22514A08798E3404DDEF9519B3CD3A431B302B0A6DF25F1437"
    "4FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED"
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF05"
    "98DA48361C55D39A69163FA8FD24CF5F83655D23DCA3AD961C62F356208552BB"
    "9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B"
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF695581718"
    "3995497CEA956AE515D2261898FA051015728E5A8AACAA68FFFFFFFFFFFFFFFF",
    16,
)
GROUP_GENERATOR = 2
PUBLIC_KEY_BYTES = 256
PRIVATE_EXPONENT_BITS = 256
NONCE_BYTES = 16
MODULUS_BITS = 128
# An element modulo 2**128 travels and is computed on as two uint64 limbs (low, high).
LIMBS = 2
_ELEMENT_BYTES = 8 * LIMBS
_PAIR_KEY_DOMAIN = b"fedcc.secure_sum.pair_key.v1\0"
_MASK_DOMAIN = b"fedcc.secure_sum.mask.v1\0"


@dataclass(frozen=True)
class MaskKey:
    """One shard's Diffie-Hellman key pair for one secure sum: used once, then dropped."""

    private: int = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> MaskKey:
        """A fresh key pair: a uniform 256-bit private exponent (at least 2), g**x mod p."""
        private = secrets.randbelow((1 << PRIVATE_EXPONENT_BITS) - 2) + 2
        public = pow(GROUP_GENERATOR, private, GROUP_PRIME).to_bytes(PUBLIC_KEY_BYTES, "big")
        return cls(private, public)


def check_public_key(public: Any, owner: str) -> int:
    """The group element of a public key; a `BackendError` naming `owner` if it is not one.

    1 and p - 1 are refused: they would confine the shared secret to a
    subgroup of order at most 2, which anyone could guess.
    """
    if type(public) is not bytes or len(public) != PUBLIC_KEY_BYTES:
        found = f"{len(public)} bytes" if type(public) is bytes else f"a {type(public).__name__}"
        raise BackendError(
            f"secure sum: the public key of {owner} should be {PUBLIC_KEY_BYTES} bytes, "
            f"found {found}"
        )
    element = int.from_bytes(public, "big")
    if not 2 <= element <= GROUP_PRIME - 2:
        raise BackendError(
            f"secure sum: the public key of {owner} is not an element of the group "
            "(it must be in [2, p - 2])"
        )
    return element


def pair_key(key: MaskKey, peer_public: bytes, nonce: bytes, low: bytes, high: bytes) -> bytes:
    """The 32-byte key that `key`'s owner shares with the owner of `peer_public`.

    `low` and `high` are the two parties' public keys, the lower-indexed
    party's first, so that both derive the same key; binding them and the
    aggregation's `nonce` makes every pair key of every aggregation distinct.
    """
    shared = pow(check_public_key(peer_public, "a peer"), key.private, GROUP_PRIME)
    kdf = hashlib.blake2b(digest_size=32)
    for part in (_PAIR_KEY_DOMAIN, shared.to_bytes(PUBLIC_KEY_BYTES, "big"), nonce, low, high):
        kdf.update(part)
    return kdf.digest()


def mask_stream(key: bytes, leaf: int, size: int) -> np.ndarray:
    """Leaf `leaf`'s mask for the pair `key`: `size` uniform numbers mod 2**128, (size, 2) limbs."""
    prg = hashlib.shake_256(_MASK_DOMAIN + key + leaf.to_bytes(4, "little"))
    stream = np.frombuffer(prg.digest(_ELEMENT_BYTES * size), dtype="<u8")
    return stream.astype(np.uint64).reshape(size, LIMBS)


# -- arithmetic modulo 2**128 on (n, 2) uint64 limbs: uint64 arrays wrap modulo 2**64 ----------


def to_limbs(values: np.ndarray) -> np.ndarray:
    """Non-negative integers (any int dtype) as (n, 2) limbs, n = values.size."""
    low = np.asarray(values).reshape(-1).astype(np.uint64)
    return np.stack([low, np.zeros_like(low)], axis=-1)


def add_limbs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a + b modulo 2**128."""
    low = a[:, 0] + b[:, 0]
    carry = (low < a[:, 0]).astype(np.uint64)
    return np.stack([low, a[:, 1] + b[:, 1] + carry], axis=-1)


def subtract_limbs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a - b modulo 2**128."""
    borrow = (a[:, 0] < b[:, 0]).astype(np.uint64)
    return np.stack([a[:, 0] - b[:, 0], a[:, 1] - b[:, 1] - borrow], axis=-1)


def limbs_to_ints(limbs: np.ndarray) -> list[int]:
    """The numbers of (n, 2) limbs (or (*shape, 2)) as Python ints, for tests and messages."""
    flat = np.asarray(limbs, dtype=np.uint64).reshape(-1, LIMBS)
    return [int(low) | (int(high) << 64) for low, high in flat]


# -- the two ends of the protocol ---------------------------------------------------------------


def masked_input(
    aggregation: Aggregation,
    partials: Sequence[Any],
    key: MaskKey,
    index: int,
    public_keys: Sequence[bytes],
    nonce: bytes,
) -> tuple[np.ndarray, ...]:
    """Shard `index`'s masked input: the exact sum of its `partials`, masked, a leaf at a time.

    `partials` are the shard's checked partial sums (values of the member
    type); `public_keys` are every shard's, in shard order, as the server
    relayed them. Each leaf travels as a uint64 array of shape (*shape, 2).
    """
    if not 0 <= index < len(public_keys) or public_keys[index] != key.public:
        raise BackendError(
            f"secure sum: the server relayed {len(public_keys)} public keys, and the one at "
            f"position {index} is not this shard's: the key exchange is inconsistent"
        )
    # A shard alone has no peer and adds no mask: the server then learns its partial
    # sum, but that is the total, which is the output the server is meant to learn.
    pair_keys: list[tuple[int, bytes]] = []
    for peer, peer_public in enumerate(public_keys):
        if peer == index:
            continue
        check_public_key(peer_public, f"shard {peer}")
        low, high = (peer_public, key.public) if peer < index else (key.public, peer_public)
        sign = 1 if peer > index else -1
        pair_keys.append((sign, pair_key(key, peer_public, nonce, low, high)))
    flatten = structure.flattener(aggregation.member_type)
    leaves: list[np.ndarray] = []
    for leaf, values in enumerate(zip(*(flatten(partial) for partial in partials), strict=True)):
        shape = np.shape(values[0])
        total = to_limbs(np.asarray(values[0]))
        for value in values[1:]:
            if np.shape(value) != shape:
                raise BackendError(
                    f"{aggregation.intrinsic}: the clients' values of tensor leaf {leaf} have "
                    f"different shapes {shape} and {np.shape(value)}"
                )
            total = add_limbs(total, to_limbs(np.asarray(value)))
        for sign, shared in pair_keys:
            mask = mask_stream(shared, leaf, total.shape[0])
            total = add_limbs(total, mask) if sign > 0 else subtract_limbs(total, mask)
        leaves.append(total.reshape(*shape, LIMBS))
    return tuple(leaves)


def unmask(aggregation: Aggregation, replies: Sequence[Any], names: Sequence[str]) -> Any:
    """The secure sum from every shard's masked input (`names[k]` says who sent `replies[k]`).

    The masks cancel only if every shard's input is there; the total is then
    exact, checked against each leaf's dtype (the reference backend's
    overflow error) and given as the reference backend gives it.
    """
    leaf_types = tensor_leaves(aggregation.member_type)
    totals: list[np.ndarray] = []
    shapes: list[tuple[int, ...]] = []
    for k, reply in enumerate(replies):
        _check_reply(aggregation, reply, len(leaf_types), names[k])
        for leaf, limbs in enumerate(reply):
            if k == 0:
                shapes.append(limbs.shape[:-1])
                totals.append(limbs.reshape(-1, LIMBS))
            elif limbs.shape[:-1] != shapes[leaf]:
                raise BackendError(
                    f"{aggregation.intrinsic}: the values of tensor leaf {leaf} have shape "
                    f"{shapes[leaf]} on {names[0]} but {limbs.shape[:-1]} on {names[k]}"
                )
            else:
                totals[leaf] = add_limbs(totals[leaf], limbs.reshape(-1, LIMBS))
    results = []
    for t, total, shape in zip(leaf_types, totals, shapes, strict=True):
        results.append(_to_tensor(aggregation, t, total, shape))
    return structure.unflattener(aggregation.member_type)(results)


def _check_reply(aggregation: Aggregation, reply: Any, leaves: int, name: str) -> None:
    if (
        type(reply) is not tuple
        or len(reply) != leaves
        or not all(
            isinstance(limbs, np.ndarray)
            and limbs.dtype == np.uint64
            and limbs.ndim >= 1
            and limbs.shape[-1] == LIMBS
            for limbs in reply
        )
    ):
        raise BackendError(
            f"{aggregation.intrinsic}: {name} sent a masked input that is not {leaves} uint64 "
            f"array(s) of limbs (shape (..., {LIMBS})): found {_describe(reply)}"
        )


def _to_tensor(
    aggregation: Aggregation, t: TensorType, total: np.ndarray, shape: tuple[int, ...]
) -> Any:
    largest = int(np.iinfo(t.dtype).max)
    if total.size and (np.any(total[:, 1] != 0) or int(total[:, 0].max()) > largest):
        raise overflow_error(aggregation.intrinsic, t)
    value = total[:, 0].astype(t.dtype).reshape(shape)
    # A rank-0 sum is a NumPy scalar, as NumPy's `add` of two scalars gives.
    return value[()] if value.ndim == 0 else value


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"an array of {value.dtype} {value.shape}"
    if isinstance(value, tuple):
        return f"a tuple of {len(value)}: [{', '.join(_describe(v) for v in value[:4])}]"
    return type(value).__name__
