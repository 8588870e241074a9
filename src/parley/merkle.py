"""RFC 9162 (RFC 6962) Merkle trees, so anyone can check a Parley log from the outside.

An auditor who holds the leaf hashes of a log, or only a signed tree head and a
proof, uses this module to recompute the root, to make inclusion and
consistency proofs, and to verify the proofs a log hands out. The functions
are pure functions on bytes that need nothing but :mod:`hashlib` (and Parley's
error classes): no I/O, no clock, no randomness, no state shared between calls.
``MerkleLog`` keeps state only for the one log that owns it.

The tree is exactly the one of RFC 9162 section 2.1 (identical to RFC 6962
section 2.1), so the roots and proofs agree byte for byte with Certificate
Transparency, Trillian, ``transparency-dev/merkle`` and sigstore:

* a leaf hash is ``SHA-256(0x00 || entry)`` (:func:`leaf_hash`);
* an interior node is ``SHA-256(0x01 || left || right)`` (:func:`node_hash`);
* the tree over ``n > 1`` leaves splits at the largest power of two smaller than
  ``n``; the tree over no leaves has the root ``SHA-256("")`` (:data:`EMPTY_ROOT`).

Producing proofs (:func:`root`, :func:`inclusion_proof`,
:func:`consistency_proof` and :class:`MerkleLog`) trusts its caller: a bad
argument there raises :class:`parley.errors.UsageError`. Checking proofs
(:func:`verify_inclusion`, :func:`verify_consistency`) trusts nobody: any
failure at all, including malformed arguments, raises
:class:`parley.errors.InclusionProofError` or
:class:`parley.errors.ConsistencyProofError` (both are
:class:`parley.errors.VerificationError`) with a sentence saying what is wrong.
A verifier that returns ``None`` has accepted the proof.

Indices are 0-based: the first leaf has index 0 and a tree of size ``n`` holds
the leaves ``0 .. n-1``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from typing import ClassVar, Final, cast

from parley.errors import (
    ConsistencyProofError,
    InclusionProofError,
    UsageError,
    VerificationError,
)

__all__ = [
    "EMPTY_ROOT",
    "MerkleLog",
    "consistency_proof",
    "inclusion_proof",
    "leaf_hash",
    "node_hash",
    "root",
    "verify_consistency",
    "verify_inclusion",
]

_HASH_SIZE: Final = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"
_sha256 = hashlib.sha256

EMPTY_ROOT: Final[bytes] = _sha256(b"").digest()
"""Root of the tree with no leaves: SHA-256 of the empty string (RFC 9162 2.1.1)."""

# A range hasher: the Merkle Tree Hash of the leaves [lo, hi), where lo is a
# multiple of the smallest power of two >= hi - lo (true of every range the
# RFC's recursive split produces).
_RangeHash = Callable[[int, int], bytes]


# --------------------------------------------------------------------------
# Hashing


def leaf_hash(entry: bytes) -> bytes:
    """Return the leaf hash of ``entry``: ``SHA-256(0x00 || entry)``."""
    h = _sha256(_LEAF_PREFIX)
    h.update(entry)  # no copy of a long entry
    return h.digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Return the hash of an interior node: ``SHA-256(0x01 || left || right)``."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _fold(hashes: list[bytes]) -> bytes:
    """Merkle Tree Hash of a non-empty list of leaf hashes.

    Pairs neighbours level by level and carries an odd last node up unchanged,
    which builds exactly the tree of RFC 9162 2.1.1 (left subtrees are always
    complete and of the largest power-of-two size).
    """
    while len(hashes) > 1:
        paired = [
            _sha256(_NODE_PREFIX + hashes[i] + hashes[i + 1]).digest()
            for i in range(0, len(hashes) - 1, 2)
        ]
        if len(hashes) & 1:
            paired.append(hashes[-1])
        hashes = paired
    return hashes[0]


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (``n >= 2``)."""
    return 1 << ((n - 1).bit_length() - 1)


# --------------------------------------------------------------------------
# Proof construction, shared by the pure functions and MerkleLog so both
# produce the same bytes.


def _path(index: int, size: int, mth: _RangeHash) -> list[bytes]:
    """PATH(index, D[0:size]) of RFC 9162 2.1.3.1, leaf side first."""
    outer_first: list[bytes] = []
    lo = 0
    while size > 1:
        k = _split(size)
        if index < k:
            outer_first.append(mth(lo + k, lo + size))
            size = k
        else:
            outer_first.append(mth(lo, lo + k))
            index -= k
            lo += k
            size -= k
    outer_first.reverse()
    return outer_first


def _proof(old_size: int, size: int, mth: _RangeHash) -> list[bytes]:
    """PROOF(old_size, D[0:size]) = SUBPROOF(old_size, D[0:size], true) of RFC 9162 2.1.4.1."""
    if old_size in (0, size):
        return []
    outer_first: list[bytes] = []
    lo = 0
    whole_old_tree = True  # the "b" flag of SUBPROOF
    while old_size != size:
        k = _split(size)
        if old_size <= k:
            outer_first.append(mth(lo + k, lo + size))
            size = k
        else:
            outer_first.append(mth(lo, lo + k))
            old_size -= k
            lo += k
            size -= k
            whole_old_tree = False
    if not whole_old_tree:
        outer_first.append(mth(lo, lo + size))
    outer_first.reverse()
    return outer_first


def _inclusion_proof_length(index: int, size: int) -> int:
    """Number of hashes in the inclusion proof of ``index`` in a tree of ``size`` (index < size)."""
    inner = (index ^ (size - 1)).bit_length()
    border = (index >> inner).bit_count()
    return inner + border


def _consistency_proof_length(old_size: int, new_size: int) -> int:
    """Number of hashes in a consistency proof, for ``0 < old_size < new_size``."""
    inner = ((old_size - 1) ^ (new_size - 1)).bit_length()
    border = ((old_size - 1) >> inner).bit_count()
    shift = (old_size & -old_size).bit_length() - 1  # trailing zero bits of old_size
    # Unless the old tree is itself a complete subtree (old_size a power of
    # two), the proof starts with the hash of the subtree it shares with the
    # new tree.
    seed = 0 if old_size == 1 << shift else 1
    return seed + (inner - shift) + border


# --------------------------------------------------------------------------
# Argument checks


def _short(value: bytes) -> str:
    """The first 8 bytes of a hash in hex, enough to tell two hashes apart by eye."""
    return bytes(value[:8]).hex() + "…"


def _check_size(value: object, what: str, error: type[Exception]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"the {what} must be an integer, not {type(value).__name__}")
    if value < 0:
        raise error(f"the {what} {value} is negative")
    return value


def _check_hash(value: object, what: str, error: type[Exception]) -> bytes:
    if not isinstance(value, bytes | bytearray):
        raise error(f"{what} is a {type(value).__name__}, not bytes")
    if len(value) != _HASH_SIZE:
        raise error(f"{what} is {len(value)} bytes long; a SHA-256 hash is {_HASH_SIZE} bytes")
    return bytes(value)


def _check_proof(proof: object, error: type[VerificationError]) -> list[bytes]:
    if isinstance(proof, bytes | bytearray | memoryview | str):
        raise error(
            f"the proof must be a list of hashes, not a single {type(proof).__name__} value"
        )
    try:
        items = list(cast("Iterable[object]", proof))
    except TypeError:
        raise error(f"the proof must be a list of hashes, not {type(proof).__name__}") from None
    count = len(items)
    return [
        _check_hash(item, f"hash {i + 1} of {count} in the proof", error)
        for i, item in enumerate(items)
    ]


def _check_leaves(leaf_hashes: Sequence[bytes]) -> list[bytes]:
    if isinstance(leaf_hashes, bytes | bytearray | memoryview | str):
        raise UsageError(
            f"leaf_hashes must be a sequence of 32-byte hashes, "
            f"not a single {type(leaf_hashes).__name__} value"
        )
    return [
        _check_hash(h, f"leaf hash {i} (counting from 0)", UsageError)
        for i, h in enumerate(leaf_hashes)
    ]


def _slice_hasher(leaves: list[bytes]) -> _RangeHash:
    def mth(lo: int, hi: int) -> bytes:
        return _fold(leaves[lo:hi])

    return mth


# --------------------------------------------------------------------------
# Pure functions over a list of leaf hashes


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """Return the Merkle Tree Hash (RFC 9162 2.1.1) of ``leaf_hashes``.

    ``leaf_hashes`` are leaf hashes (see :func:`leaf_hash`), not entries. The
    root of no leaves is :data:`EMPTY_ROOT`.
    """
    leaves = _check_leaves(leaf_hashes)
    if not leaves:
        return EMPTY_ROOT
    return _fold(leaves)


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Return the inclusion proof (RFC 9162 2.1.3.1 PATH) of leaf ``index``.

    The proof is for the tree over all of ``leaf_hashes``; to prove against an
    older tree, pass the prefix ``leaf_hashes[:tree_size]``. Hashes are listed
    from the leaf's sibling up to the child of the root, as in RFC 9162.
    """
    leaves = _check_leaves(leaf_hashes)
    index = _check_size(index, "index", UsageError)
    if index >= len(leaves):
        raise UsageError(f"index {index} is outside a tree of size {len(leaves)}")
    return _path(index, len(leaves), _slice_hasher(leaves))


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Return the consistency proof (RFC 9162 2.1.4.1 PROOF) from ``old_size`` to all leaves.

    The proof shows that the tree of the first ``old_size`` leaves is a prefix
    of the tree over all of ``leaf_hashes``. It is empty when ``old_size`` is
    0 or equal to the new size: those need no proof.
    """
    leaves = _check_leaves(leaf_hashes)
    old_size = _check_size(old_size, "old size", UsageError)
    if old_size > len(leaves):
        raise UsageError(f"old size {old_size} is larger than the tree of size {len(leaves)}")
    return _proof(old_size, len(leaves), _slice_hasher(leaves))


# --------------------------------------------------------------------------
# Verifiers


def verify_inclusion(
    leaf_hash: bytes, index: int, tree_size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``tree_size`` with ``root``.

    Runs the algorithm of RFC 9162 2.1.3.2. Returns ``None`` if the proof
    holds and raises :class:`parley.errors.InclusionProofError`, saying why,
    on any failure (including arguments of the wrong type or length).
    """
    err = InclusionProofError
    index = _check_size(index, "index", err)
    tree_size = _check_size(tree_size, "tree size", err)
    leaf = _check_hash(leaf_hash, "the leaf hash", err)
    expected_root = _check_hash(root, "the expected root", err)
    path = _check_proof(proof, err)
    if index >= tree_size:
        raise err(f"index {index} is outside a tree of size {tree_size}")
    want = _inclusion_proof_length(index, tree_size)
    if len(path) != want:
        raise err(
            f"proof has {len(path)} hashes, expected {want} "
            f"for index {index} in a tree of size {tree_size}"
        )

    # RFC 9162 2.1.3.2, steps 2 to 5.
    fn = index
    sn = tree_size - 1
    r = leaf
    for p in path:
        if sn == 0:
            raise err(f"proof is too long for index {index} in a tree of size {tree_size}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn != 0 and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise err(f"proof is too short for index {index} in a tree of size {tree_size}")
    if r != expected_root:
        raise err(
            f"computed root {_short(r)} does not match the expected root "
            f"{_short(expected_root)}: leaf {index} is not in that tree of size {tree_size}, "
            f"or the proof is wrong"
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``old_size`` with ``old_root`` is a prefix of the one of ``new_size``.

    Runs the algorithm of RFC 9162 2.1.4.2, after the cases that RFC leaves
    to the caller: equal sizes need an empty proof and equal roots; an old
    size of 0 needs an empty proof and ``old_root`` equal to
    :data:`EMPTY_ROOT`; a log never shrinks. Returns ``None`` if the proof
    holds and raises :class:`parley.errors.ConsistencyProofError`, saying why,
    on any failure (including arguments of the wrong type or length).
    """
    err = ConsistencyProofError
    old_size = _check_size(old_size, "old size", err)
    new_size = _check_size(new_size, "new size", err)
    first = _check_hash(old_root, "the old root", err)
    second = _check_hash(new_root, "the new root", err)
    path = _check_proof(proof, err)
    if old_size > new_size:
        raise err(f"old size {old_size} is larger than new size {new_size}; a log cannot shrink")
    if old_size == new_size:
        if path:
            raise err(
                f"the sizes are equal ({old_size}), so the proof must be empty, "
                f"but it has {len(path)} hashes"
            )
        if first != second:
            raise err(
                f"the sizes are equal ({old_size}) but the roots differ: "
                f"old root {_short(first)}, new root {_short(second)}"
            )
        return
    if old_size == 0:
        if path:
            raise err(
                f"a tree of size 0 is a prefix of every tree, so the proof must be empty, "
                f"but it has {len(path)} hashes"
            )
        if first != EMPTY_ROOT:
            raise err(
                f"the old root {_short(first)} is not the root of the empty tree "
                f"{_short(EMPTY_ROOT)}"
            )
        return
    want = _consistency_proof_length(old_size, new_size)
    if not path:  # RFC 9162 2.1.4.2, step 1
        raise err(
            f"proof is empty, but growing a tree from size {old_size} to size {new_size} "
            f"needs {want} hashes"
        )
    if len(path) != want:
        raise err(
            f"proof has {len(path)} hashes, expected {want} "
            f"for growing a tree from size {old_size} to size {new_size}"
        )

    # RFC 9162 2.1.4.2, steps 2 to 7.
    if old_size & (old_size - 1) == 0:
        path = [first, *path]
    fn = old_size - 1
    sn = new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise err(
                f"proof is too long for growing a tree from size {old_size} to size {new_size}"
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn != 0 and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise err(f"proof is too short for growing a tree from size {old_size} to size {new_size}")
    if fr != first:
        raise err(
            f"computed old root {_short(fr)} does not match the given old root "
            f"{_short(first)} for size {old_size}"
        )
    if sr != second:
        blame_old = ""
        if old_size & (old_size - 1) == 0:
            blame_old = (
                f"; as {old_size} is a power of two the proof starts from the given old root "
                f"{_short(first)}, which may be wrong instead"
            )
        raise err(
            f"computed new root {_short(sr)} does not match the given new root "
            f"{_short(second)} for size {new_size}{blame_old}"
        )


# --------------------------------------------------------------------------
# Incremental log


class MerkleLog:
    """An append-only list of leaf hashes that answers roots and proofs quickly.

    For a long-lived log: the leaf hashes live in one ``bytearray`` (32 bytes
    a leaf, so a million leaves take about 32 MB), the current root comes from
    a stack of the roots of complete subtrees (``O(log n)``, and cached until
    the next append), and the hash of every complete, aligned subtree of
    ``2**CACHED_LEVEL`` leaves or more is kept, in one ``bytearray`` per level,
    as the append that completes it computes it anyway. With the default of
    64 leaves that costs about one byte a leaf (3% on top of the leaves), and
    a proof or an old root for any tree size then needs at most some 140
    hashes however long the log is: tens of microseconds at a million leaves.

    Roots and proofs are byte for byte those of :func:`root`,
    :func:`inclusion_proof` and :func:`consistency_proof` over the same leaf
    hashes. Bad arguments raise :class:`parley.errors.UsageError`. Not safe for
    concurrent use from several threads without a lock.
    """

    #: Subtrees of ``2**CACHED_LEVEL`` leaves and larger have their hash kept.
    #: At least 1; a subclass may change it (before anything is appended) to
    #: trade memory for speed.
    CACHED_LEVEL: ClassVar[int] = 6

    __slots__ = ("_leaves", "_levels", "_root", "_size", "_stack")

    def __init__(self) -> None:
        self._leaves = bytearray()
        self._size = 0
        # Roots of the complete subtrees that make up the tree, largest first:
        # one per set bit of the size.
        self._stack: list[bytes] = []
        # _levels[j] holds, back to back, the hashes of the complete aligned
        # subtrees of 2**(CACHED_LEVEL + j) leaves, in order.
        self._levels: list[bytearray] = []
        self._root: bytes | None = EMPTY_ROOT

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def append(self, leaf_hash: bytes) -> int:
        """Append a leaf hash (see :func:`leaf_hash`) and return its index."""
        h = _check_hash(leaf_hash, "the leaf hash", UsageError)
        index = self._size
        self._leaves += h
        # Every trailing 1 bit of the old size is a complete subtree that the
        # new leaf now pairs with.
        carry = index
        level = 0
        while carry & 1:
            h = _sha256(_NODE_PREFIX + self._stack.pop() + h).digest()
            carry >>= 1
            level += 1
            if level >= self.CACHED_LEVEL:
                j = level - self.CACHED_LEVEL
                if j == len(self._levels):
                    self._levels.append(bytearray())
                self._levels[j] += h
        self._stack.append(h)
        self._size = index + 1
        self._root = None
        return index

    def root_with(self, leaf_hashes: Sequence[bytes]) -> bytes:
        """Return the root the log would have with ``leaf_hashes`` appended, appending nothing.

        A witness checks a peer's leaves against the peer's checkpoint this
        way before it takes them into its mirror.
        """
        stack = list(self._stack)
        size = self._size
        for leaf in leaf_hashes:
            h = _check_hash(leaf, "the leaf hash", UsageError)
            carry = size
            while carry & 1:
                h = _sha256(_NODE_PREFIX + stack.pop() + h).digest()
                carry >>= 1
            stack.append(h)
            size += 1
        if not stack:
            return EMPTY_ROOT
        h = stack[-1]
        for left in reversed(stack[:-1]):
            h = _sha256(_NODE_PREFIX + left + h).digest()
        return h

    def leaf(self, index: int) -> bytes:
        """Return the leaf hash at ``index``."""
        index = self._check_index(index, self._size, "index")
        offset = index * _HASH_SIZE
        return bytes(self._leaves[offset : offset + _HASH_SIZE])

    def root(self) -> bytes:
        """Return the root of the whole log (cached; ``O(log n)`` after an append)."""
        if self._root is None:
            stack = self._stack
            h = stack[-1]
            for left in reversed(stack[:-1]):
                h = _sha256(_NODE_PREFIX + left + h).digest()
            self._root = h
        return self._root

    def root_at(self, size: int) -> bytes:
        """Return the root the log had when it held ``size`` leaves."""
        size = self._check_tree_size(size, "size")
        if size == self._size:
            return self.root()
        if size == 0:
            return EMPTY_ROOT
        return self._range_hash(0, size)

    def inclusion_proof(self, index: int, tree_size: int | None = None) -> list[bytes]:
        """Return the inclusion proof of leaf ``index`` in the tree of ``tree_size`` leaves.

        ``tree_size`` defaults to the current size of the log.
        """
        size = self._size if tree_size is None else self._check_tree_size(tree_size, "tree size")
        index = self._check_index(index, size, "index")
        return _path(index, size, self._range_hash)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Return the consistency proof from ``old_size`` to ``new_size`` leaves.

        ``new_size`` defaults to the current size of the log.
        """
        size = self._size if new_size is None else self._check_tree_size(new_size, "new size")
        old = _check_size(old_size, "old size", UsageError)
        if old > size:
            raise UsageError(f"old size {old} is larger than the new size {size}")
        return _proof(old, size, self._range_hash)

    # -- internals ---------------------------------------------------------

    def _check_tree_size(self, size: object, what: str) -> int:
        value = _check_size(size, what, UsageError)
        if value > self._size:
            raise UsageError(
                f"{what} {value} is larger than the log, which has {self._size} leaves"
            )
        return value

    @staticmethod
    def _check_index(index: object, size: int, what: str) -> int:
        value = _check_size(index, what, UsageError)
        if value >= size:
            raise UsageError(f"{what} {value} is outside a tree of size {size}")
        return value

    def _complete(self, level: int, position: int) -> bytes:
        """Hash of the complete subtree of ``2**level`` leaves from leaf ``position << level``."""
        if level >= self.CACHED_LEVEL:
            offset = position * _HASH_SIZE
            return bytes(self._levels[level - self.CACHED_LEVEL][offset : offset + _HASH_SIZE])
        start = (position << level) * _HASH_SIZE
        if level == 0:
            return bytes(self._leaves[start : start + _HASH_SIZE])
        buf = self._leaves
        # The first level hashes adjacent leaf pairs straight out of the buffer.
        width = 2 * _HASH_SIZE
        hashes = [
            _sha256(_NODE_PREFIX + buf[o : o + width]).digest()
            for o in range(start, start + (_HASH_SIZE << level), width)
        ]
        while len(hashes) > 1:
            hashes = [
                _sha256(_NODE_PREFIX + hashes[i] + hashes[i + 1]).digest()
                for i in range(0, len(hashes), 2)
            ]
        return hashes[0]

    def _range_hash(self, lo: int, hi: int) -> bytes:
        """Merkle Tree Hash of the leaves ``[lo, hi)``, an aligned range (see ``_RangeHash``)."""
        parts: list[bytes] = []
        while lo < hi:
            level = (hi - lo).bit_length() - 1
            parts.append(self._complete(level, lo >> level))
            lo += 1 << level
        h = parts[-1]
        for left in reversed(parts[:-1]):
            h = _sha256(_NODE_PREFIX + left + h).digest()
        return h
