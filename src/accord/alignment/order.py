"""The shared shuffle: one seed agreed by every enclave, one order of the intersection.

``shared_seed`` hashes every enclave's random share in an order-independent way::

    SHA-256("accord/alignment/shared-seed/v1" ‖ LE32(k) ‖ LE32(len(s)) ‖ s ‖ ...)

over the ``k`` shares ``s`` in sorted (bytewise) order.

``shared_order`` sorts the intersection by a keyed pseudo-random permutation of each digest:
``k = HMAC-SHA256(seed, "accord/alignment/shared-order/v1")``, sort key ``AES-256_k(digest)``
(the 16 digest bytes as one block), compared as (word 0, word 1) little-endian. Because AES
is a permutation, distinct digests get distinct sort keys, so the order depends only on the
*set* of digests and the seed — not on any party's row order or on the order the digests
arrived in — and it is the same on every party and every machine (no numpy RNG stream, whose
algorithm may change across versions). Without the seed the order is a pseudo-random
permutation: it is neither input order nor sorted order, and differs across seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import struct
from collections.abc import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from accord.alignment._sorting import check_digests, sort_order
from accord.alignment.digests import DIGEST_DTYPE, derive_key
from accord.errors import ProtocolError

__all__ = ["MIN_SHARE_BYTES", "shared_order", "shared_seed"]

#: Each enclave's random share must carry at least this many bytes.
MIN_SHARE_BYTES = 16

_SEED_LABEL = b"accord/alignment/shared-seed/v1"
_ORDER_LABEL = b"accord/alignment/shared-order/v1"


def shared_seed(contributions: Sequence[bytes]) -> bytes:
    """The 32-byte seed of a session: an order-independent hash of every enclave's share.

    Raises :class:`ProtocolError` for no shares, a share shorter than 16 bytes, or two equal
    shares (independent random shares never repeat; a repeat means a replayed share).
    """
    if len(contributions) == 0:
        raise ProtocolError("shared seed: expected at least one share, got none")
    shares = []
    for i, share in enumerate(contributions):
        if not isinstance(share, bytes | bytearray) or len(share) < MIN_SHARE_BYTES:
            size = len(share) if isinstance(share, bytes | bytearray) else type(share).__name__
            raise ProtocolError(
                f"shared seed: share {i}: expected at least {MIN_SHARE_BYTES} bytes, got {size}"
            )
        shares.append(bytes(share))
    shares.sort()
    if any(a == b for a, b in itertools.pairwise(shares)):
        raise ProtocolError("shared seed: two shares are equal (replayed share)")
    digest = hashlib.sha256(_SEED_LABEL)
    digest.update(struct.pack("<I", len(shares)))
    for share in shares:
        digest.update(struct.pack("<I", len(share)))
        digest.update(share)
    return digest.digest()


def shared_order(digests: np.ndarray, seed: bytes) -> np.ndarray:
    """Permutation ``p`` (int64) such that ``digests[p]`` is the shared order.

    ``digests`` are the intersection's digests in any order (distinct, as a canonical set
    is); the same set and seed give the same order on every party.
    """
    array = check_digests(digests, "digests")
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    key = derive_key(seed, _ORDER_LABEL)
    encryptor = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    plain = np.ascontiguousarray(array, dtype=DIGEST_DTYPE)
    out = np.empty(n * 16 + 15, dtype=np.uint8)
    encryptor.update_into(plain.view(np.uint8).reshape(-1).data, out.data)
    sort_keys = out[: n * 16].view(DIGEST_DTYPE).reshape(n, 2)
    return sort_order(sort_keys)
