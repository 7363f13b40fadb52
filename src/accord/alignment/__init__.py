"""Sample alignment, the pure part: normalise IDs, digest, intersect, shuffle, result.

Nothing here touches files, sockets or processes: the enclave runtime (:mod:`accord.tee`)
calls these functions on bytes it already holds, and :mod:`accord.tables` reads and writes
the tables on the host side. One party's enclave runs::

    prepared = prepare_ids(key_columns, names=["id"])     # normalise; empty / non-UTF-8 IDs
    own = digest_ids(prepared, digest_key, duplicates)     # keyed digests, duplicate policy
    wire = digests_to_bytes(own.digests)                   # canonical order, 16 bytes per ID
    peers = [digests_from_bytes(b) for b in received]      # every other party's set
    result = align(own, peers, shared_seed(shares))        # intersection in the shared order

Normalisation rule: :mod:`accord.alignment.normalise`. Digest construction (keyed AES
CBC-MAC over length-prefixed IDs, a PRF): :mod:`accord.alignment.digests`. Seed and order
derivation: :mod:`accord.alignment.order`.

What each value reveals, and to whom
------------------------------------
* The digest key and the seed exist only inside the enclaves. Digests are a PRF of the IDs
  under that key, so the digests an enclave sends reveal nothing about the IDs to anyone
  without the key; in particular a host relaying them (even decrypted) cannot test guesses.
* A peer's *enclave* learns this party's digest set, hence its size and which of its own IDs
  are in the intersection — which is the intersection itself, the intended output. It never
  learns non-matching IDs (a PRF output of an ID it does not hold is random to it).
* The canonical (sorted-by-digest) order of the sent set carries nothing about row order.
* The byte count of the exchanged digests reveals each party's set size to the relaying
  hosts (16 bytes per distinct ID) unless the runtime pads the stream.
* A host learns only :class:`AlignmentResult` for its own party: ``|I|`` and, for each shared
  position, its own local row index. The shared order is a keyed pseudo-random permutation
  of the intersection, so positions say nothing about any party's row order. With more than
  two parties only the full intersection is output, never a pairwise one.
* ``fingerprint`` (a hash of the keyed digests in shared order) reveals nothing about IDs; it
  lets the enclaves confirm they agree before releasing results.

The names below load on first use (PEP 562): a host that only checks its key columns
(:func:`plain_key_column`) loads neither the digests' AES nor the rest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from accord._lazy import lazy_attributes

# Bound at once: the function shares its module's name, which importing the module would
# otherwise bind on this package in its place.
from accord.alignment.intersect import intersect

if TYPE_CHECKING:
    from accord.alignment.digests import (
        DIGEST_BYTES,
        DigestSet,
        DuplicatePolicy,
        DuplicateReport,
        check_words,
        digest_ids,
        digests_from_bytes,
        digests_to_bytes,
        keyed_digests,
    )
    from accord.alignment.normalise import (
        IdReport,
        PreparedIds,
        plain_key_column,
        prepare_ids,
    )
    from accord.alignment.order import shared_order, shared_seed
    from accord.alignment.result import AlignmentResult, align

__all__ = [
    "DIGEST_BYTES",
    "AlignmentResult",
    "DigestSet",
    "DuplicatePolicy",
    "DuplicateReport",
    "IdReport",
    "PreparedIds",
    "align",
    "check_words",
    "digest_ids",
    "digests_from_bytes",
    "digests_to_bytes",
    "intersect",
    "keyed_digests",
    "plain_key_column",
    "prepare_ids",
    "shared_order",
    "shared_seed",
]

#: Each public name and the module of this package that defines it.
_HOMES = {
    "DIGEST_BYTES": "digests",
    "DigestSet": "digests",
    "DuplicatePolicy": "digests",
    "DuplicateReport": "digests",
    "check_words": "digests",
    "digest_ids": "digests",
    "digests_from_bytes": "digests",
    "digests_to_bytes": "digests",
    "keyed_digests": "digests",
    "IdReport": "normalise",
    "PreparedIds": "normalise",
    "plain_key_column": "normalise",
    "prepare_ids": "normalise",
    "shared_order": "order",
    "shared_seed": "order",
    "AlignmentResult": "result",
    "align": "result",
}


__getattr__ = lazy_attributes(__name__, _HOMES)
