"""Tests of parley.merkle against RFC 6962 / RFC 9162 and an independent reference.

The reference below is a direct, recursive transcription of the RFC text
(MTH, PATH, SUBPROOF), written separately from the iterative code in
``parley.merkle``. The published vectors are those of the Certificate
Transparency reference tree, as listed in ``transparency-dev/merkle``
(``proof/verify_test.go``, formerly Trillian's ``merkle/log_verifier_test.go``),
converted from its 1-based leaf numbers to 0-based indices.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley import merkle
from parley.errors import (
    ConsistencyProofError,
    InclusionProofError,
    UsageError,
    VerificationError,
)
from parley.merkle import (
    EMPTY_ROOT,
    MerkleLog,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)
from tests.scale import scaled

# --------------------------------------------------------------------------
# Independent reference, straight from the RFC text.


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    """Largest power of two smaller than n (n > 1), by counting."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    """MTH over leaf hashes (RFC 9162 2.1.1)."""
    if not d:
        return _sha256(b"")
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return _sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:]))


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) (RFC 9162 2.1.3.1)."""
    if len(d) <= 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) (RFC 9162 2.1.4.1)."""
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = _k(n)
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    """PROOF(m, D[n]); empty for m == 0 as well as m == n."""
    if m == 0:
        return []
    return ref_subproof(m, d, True)


def ref_sides(m: int, n: int) -> tuple[bool, ...]:
    """For each hash of PATH(m, D[n]), leaf side first: is that sibling on the left?"""
    if n <= 1:
        return ()
    k = _k(n)
    if m < k:
        return (*ref_sides(m, k), False)
    return (*ref_sides(m - k, n - k), True)


def ref_consistency_shape(m: int, n: int) -> tuple[str, ...]:
    """What each hash of PROOF(m, D[n]) is: the shared seed, a left or a right sibling.

    Two size pairs with the same shape make the verifier compute the very same
    roots from the same proof, so a proof for one passes for the other.
    """

    def sub(m: int, n: int, b: bool) -> tuple[str, ...]:
        if m == n:
            return () if b else ("seed",)
        k = _k(n)
        if m <= k:
            return (*sub(m, k, b), "right")
        return (*sub(m - k, n - k, False), "left")

    return () if m == 0 else sub(m, n, True)


# --------------------------------------------------------------------------
# The RFC 6962 reference tree and its published vectors.

RFC_ENTRIES = [
    bytes.fromhex(h)
    for h in [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ]
]
RFC_LEAVES = [leaf_hash(e) for e in RFC_ENTRIES]

# Root of each prefix, indexed by tree size.
RFC_ROOTS = [
    bytes.fromhex(h)
    for h in [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
]

# (index, tree size, proof); the Go source numbers leaves from 1.
RFC_INCLUSION = [
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]

# (old size, new size, proof)
RFC_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


def _hexes(proof: list[bytes]) -> list[str]:
    return [h.hex() for h in proof]


def test_hash_functions_follow_the_rfc() -> None:
    assert EMPTY_ROOT == _sha256(b"") == RFC_ROOTS[0]
    assert leaf_hash(b"") == _sha256(b"\x00") == RFC_ROOTS[1]
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    left, right = RFC_LEAVES[0], RFC_LEAVES[1]
    assert node_hash(left, right) == _sha256(b"\x01" + left + right) == RFC_ROOTS[2]
    assert node_hash(left, right) != node_hash(right, left)


@pytest.mark.parametrize("size", range(9))
def test_rfc_roots(size: int) -> None:
    leaves = RFC_LEAVES[:size]
    assert ref_mth(leaves) == RFC_ROOTS[size], "the reference disagrees with the RFC"
    assert root(leaves) == RFC_ROOTS[size]
    log = MerkleLog()
    for h in leaves:
        log.append(h)
    assert log.root() == RFC_ROOTS[size]
    full = MerkleLog()
    for h in RFC_LEAVES:
        full.append(h)
    assert full.root_at(size) == RFC_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "proof_hex"), RFC_INCLUSION)
def test_rfc_inclusion_vectors(index: int, size: int, proof_hex: list[str]) -> None:
    leaves = RFC_LEAVES[:size]
    assert _hexes(ref_path(index, leaves)) == proof_hex, "the reference disagrees with the RFC"
    proof = inclusion_proof(leaves, index)
    assert _hexes(proof) == proof_hex
    verify_inclusion(RFC_LEAVES[index], index, size, proof, RFC_ROOTS[size])
    log = MerkleLog()
    for h in RFC_LEAVES:
        log.append(h)
    assert _hexes(log.inclusion_proof(index, size)) == proof_hex


@pytest.mark.parametrize(("old", "new", "proof_hex"), RFC_CONSISTENCY)
def test_rfc_consistency_vectors(old: int, new: int, proof_hex: list[str]) -> None:
    leaves = RFC_LEAVES[:new]
    assert _hexes(ref_proof(old, leaves)) == proof_hex, "the reference disagrees with the RFC"
    proof = consistency_proof(leaves, old)
    assert _hexes(proof) == proof_hex
    verify_consistency(old, new, RFC_ROOTS[old], RFC_ROOTS[new], proof)
    log = MerkleLog()
    for h in RFC_LEAVES:
        log.append(h)
    assert _hexes(log.consistency_proof(old, new)) == proof_hex


def test_rfc_tree_every_proof_verifies() -> None:
    for size in range(1, 9):
        leaves = RFC_LEAVES[:size]
        for index in range(size):
            proof = inclusion_proof(leaves, index)
            verify_inclusion(leaves[index], index, size, proof, RFC_ROOTS[size])
        for old in range(size + 1):
            proof = consistency_proof(leaves, old)
            verify_consistency(old, size, RFC_ROOTS[old], RFC_ROOTS[size], proof)


# --------------------------------------------------------------------------
# Exhaustive agreement with the reference on small trees.


def _leaves(n: int, salt: bytes = b"") -> list[bytes]:
    return [leaf_hash(salt + i.to_bytes(4, "big")) for i in range(n)]


class _TinyCacheLog(MerkleLog):
    """Caches every subtree of 2 leaves and more: exercises the cache on small trees."""

    CACHED_LEVEL = 1


class _SmallCacheLog(MerkleLog):
    CACHED_LEVEL = 3


LOG_CLASSES: list[type[MerkleLog]] = [MerkleLog, _TinyCacheLog, _SmallCacheLog]


def test_matches_reference_exhaustively_up_to_40_leaves() -> None:
    leaves = _leaves(40)
    for n in range(41):
        d = leaves[:n]
        assert root(d) == ref_mth(d)
        for i in range(n):
            assert inclusion_proof(d, i) == ref_path(i, d)
            assert len(ref_sides(i, n)) == len(ref_path(i, d))
        for m in range(n + 1):
            assert consistency_proof(d, m) == ref_proof(m, d)
            assert len(ref_consistency_shape(m, n)) == len(ref_proof(m, d))


@pytest.mark.parametrize("cls", LOG_CLASSES)
def test_log_matches_reference_exhaustively_up_to_40_leaves(cls: type[MerkleLog]) -> None:
    leaves = _leaves(40, b"log")
    log = cls()
    assert log.size == 0
    assert log.root() == EMPTY_ROOT
    assert log.root_at(0) == EMPTY_ROOT
    assert log.consistency_proof(0) == []
    for n, h in enumerate(leaves, start=1):
        assert log.append(h) == n - 1
        assert log.size == n
        assert log.root() == ref_mth(leaves[:n])
    for n in range(41):
        d = leaves[:n]
        assert log.root_at(n) == ref_mth(d)
        for i in range(n):
            assert log.inclusion_proof(i, n) == ref_path(i, d)
        for m in range(n + 1):
            assert log.consistency_proof(m, n) == ref_proof(m, d)
    for i, h in enumerate(leaves):
        assert log.leaf(i) == h


def test_log_on_a_larger_tree_matches_the_pure_functions() -> None:
    # Crosses several cached levels of the default MerkleLog (64, 128, ... 2048).
    leaves = _leaves(3000, b"big")
    log = MerkleLog()
    for h in leaves:
        log.append(h)
    assert log.root() == root(leaves)
    for size in (1, 63, 64, 65, 127, 128, 129, 1024, 2047, 2048, 2049, 2999, 3000):
        d = leaves[:size]
        assert log.root_at(size) == root(d)
        for index in {0, size // 3, size // 2, size - 1}:
            assert log.inclusion_proof(index, size) == inclusion_proof(d, index)
        for old in {0, 1, size // 3, size // 2, size - 1, size}:
            assert log.consistency_proof(old, size) == consistency_proof(d, old)
    assert log.inclusion_proof(1234) == inclusion_proof(leaves, 1234)
    assert log.consistency_proof(1234) == consistency_proof(leaves, 1234)


def test_log_root_is_cached_and_follows_appends() -> None:
    log = MerkleLog()
    leaves = _leaves(300, b"cache")
    for n, h in enumerate(leaves, start=1):
        log.append(h)
        first = log.root()
        assert log.root() is first
        if n in (1, 2, 3, 64, 255, 256, 257, 300):
            assert first == root(leaves[:n])


# --------------------------------------------------------------------------
# Properties: every honest proof verifies; every tampered one fails.

PROPERTY_SETTINGS = settings(
    max_examples=scaled(100), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def leaf_lists(draw: st.DrawFn, min_size: int = 1, max_size: int = 200) -> list[bytes]:
    n = draw(st.integers(min_value=min_size, max_value=max_size))
    salt = draw(st.binary(max_size=8))
    return _leaves(n, salt)


def _flip(h: bytes, bit: int) -> bytes:
    b = bytearray(h)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


@PROPERTY_SETTINGS
@given(leaf_lists())
def test_every_inclusion_proof_verifies(leaves: list[bytes]) -> None:
    n = len(leaves)
    r = root(leaves)
    for index in range(n):
        proof = inclusion_proof(leaves, index)
        verify_inclusion(leaves[index], index, n, proof, r)


@PROPERTY_SETTINGS
@given(leaf_lists())
def test_every_consistency_proof_verifies(leaves: list[bytes]) -> None:
    n = len(leaves)
    r = root(leaves)
    for old in range(n + 1):
        proof = consistency_proof(leaves, old)
        verify_consistency(old, n, root(leaves[:old]), r, proof)


@st.composite
def inclusion_cases(draw: st.DrawFn) -> tuple[list[bytes], int, list[bytes], bytes]:
    leaves = draw(leaf_lists(min_size=2))
    index = draw(st.integers(min_value=0, max_value=len(leaves) - 1))
    return leaves, index, inclusion_proof(leaves, index), root(leaves)


@PROPERTY_SETTINGS
@given(inclusion_cases(), st.data())
def test_inclusion_fails_after_flipping_a_proof_bit(
    case: tuple[list[bytes], int, list[bytes], bytes], data: st.DataObject
) -> None:
    leaves, index, proof, r = case
    j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=255))
    bad = [*proof]
    bad[j] = _flip(bad[j], bit)
    with pytest.raises(InclusionProofError, match="does not match the expected root"):
        verify_inclusion(leaves[index], index, len(leaves), bad, r)


@PROPERTY_SETTINGS
@given(inclusion_cases(), st.integers(min_value=0, max_value=255))
def test_inclusion_fails_after_flipping_a_bit_of_the_leaf_or_the_root(
    case: tuple[list[bytes], int, list[bytes], bytes], bit: int
) -> None:
    leaves, index, proof, r = case
    n = len(leaves)
    with pytest.raises(InclusionProofError):
        verify_inclusion(_flip(leaves[index], bit), index, n, proof, r)
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaves[index], index, n, proof, _flip(r, bit))


@PROPERTY_SETTINGS
@given(inclusion_cases(), st.data())
def test_inclusion_fails_at_another_index(
    case: tuple[list[bytes], int, list[bytes], bytes], data: st.DataObject
) -> None:
    leaves, index, proof, r = case
    n = len(leaves)
    other = data.draw(st.integers(min_value=-2, max_value=n + 2).filter(lambda i: i != index))
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaves[index], other, n, proof, r)


@PROPERTY_SETTINGS
@given(inclusion_cases(), st.data())
def test_inclusion_at_another_tree_size_fails_unless_the_path_is_the_same(
    case: tuple[list[bytes], int, list[bytes], bytes], data: st.DataObject
) -> None:
    # The proof for leaf 0 of 5 leaves is also a valid proof for leaf 0 of 6
    # leaves under the same root (RFC 9162 cannot tell), so a changed size must
    # fail exactly when it changes the shape of the path.
    leaves, index, proof, r = case
    n = len(leaves)
    other = data.draw(st.integers(min_value=-1, max_value=2 * n + 2).filter(lambda s: s != n))
    same_path = 0 <= index < other and ref_sides(index, other) == ref_sides(index, n)
    if same_path:
        verify_inclusion(leaves[index], index, other, proof, r)
    else:
        with pytest.raises(InclusionProofError):
            verify_inclusion(leaves[index], index, other, proof, r)
    # Doubling and halving, as in the Go tests, always change the shape.
    for changed in (n * 2, n // 2):
        assert ref_sides(index, changed) != ref_sides(index, n) or changed <= index
        with pytest.raises(InclusionProofError):
            verify_inclusion(leaves[index], index, changed, proof, r)


@PROPERTY_SETTINGS
@given(inclusion_cases(), st.data())
def test_inclusion_fails_with_a_hash_dropped_or_added(
    case: tuple[list[bytes], int, list[bytes], bytes], data: st.DataObject
) -> None:
    leaves, index, proof, r = case
    n = len(leaves)
    j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    dropped = proof[:j] + proof[j + 1 :]
    with pytest.raises(InclusionProofError, match="proof has"):
        verify_inclusion(leaves[index], index, n, dropped, r)
    k = data.draw(st.integers(min_value=0, max_value=len(proof)))
    extra = data.draw(st.sampled_from([r, leaves[index], proof[0], EMPTY_ROOT, bytes(32)]))
    added = [*proof[:k], extra, *proof[k:]]
    with pytest.raises(InclusionProofError, match="proof has"):
        verify_inclusion(leaves[index], index, n, added, r)


@st.composite
def consistency_cases(draw: st.DrawFn) -> tuple[int, int, bytes, bytes, list[bytes]]:
    leaves = draw(leaf_lists(min_size=2))
    n = len(leaves)
    old = draw(st.integers(min_value=1, max_value=n - 1))
    return old, n, root(leaves[:old]), root(leaves), consistency_proof(leaves, old)


@PROPERTY_SETTINGS
@given(consistency_cases(), st.data())
def test_consistency_fails_after_flipping_a_proof_bit(
    case: tuple[int, int, bytes, bytes, list[bytes]], data: st.DataObject
) -> None:
    old, new, old_root, new_root, proof = case
    j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=255))
    bad = [*proof]
    bad[j] = _flip(bad[j], bit)
    with pytest.raises(ConsistencyProofError, match="does not match the given"):
        verify_consistency(old, new, old_root, new_root, bad)


@PROPERTY_SETTINGS
@given(consistency_cases(), st.integers(min_value=0, max_value=255))
def test_consistency_fails_after_flipping_a_bit_of_either_root(
    case: tuple[int, int, bytes, bytes, list[bytes]], bit: int
) -> None:
    old, new, old_root, new_root, proof = case
    # When the old size is a power of two the old root is where the proof
    # starts, so a wrong one shows as a wrong new root.
    wrong_old = "may be wrong instead" if old & (old - 1) == 0 else "old root"
    with pytest.raises(ConsistencyProofError, match=wrong_old):
        verify_consistency(old, new, _flip(old_root, bit), new_root, proof)
    with pytest.raises(ConsistencyProofError, match="new root"):
        verify_consistency(old, new, old_root, _flip(new_root, bit), proof)
    with pytest.raises(ConsistencyProofError):
        verify_consistency(old, new, new_root, old_root, proof)


@PROPERTY_SETTINGS
@given(consistency_cases(), st.data())
def test_consistency_with_other_sizes_fails_unless_the_proof_shape_is_the_same(
    case: tuple[int, int, bytes, bytes, list[bytes]], data: st.DataObject
) -> None:
    # As with inclusion, a proof from 4 to 5 leaves also "proves" 4 to 6 leaves
    # under the same roots; anything that changes the shape must fail.
    old, new, old_root, new_root, proof = case
    shape = ref_consistency_shape(old, new)
    sizes = st.integers(min_value=-1, max_value=2 * new + 2)
    other_old = data.draw(sizes)
    other_new = data.draw(sizes)
    if (other_old, other_new) == (old, new):
        other_new += 1
    same_shape = 0 < other_old < other_new and ref_consistency_shape(other_old, other_new) == shape
    if same_shape:
        verify_consistency(other_old, other_new, old_root, new_root, proof)
    else:
        with pytest.raises(ConsistencyProofError):
            verify_consistency(other_old, other_new, old_root, new_root, proof)
    # The corruptions of the Go tests.
    for o, n in [(old - 1, new), (old + 1, new), (old ^ 2, new), (old, new * 2), (old, new // 2)]:
        if 0 < o < n and ref_consistency_shape(o, n) == shape:
            continue  # genuinely indistinguishable
        with pytest.raises(ConsistencyProofError):
            verify_consistency(o, n, old_root, new_root, proof)


@PROPERTY_SETTINGS
@given(consistency_cases(), st.data())
def test_consistency_fails_with_a_hash_dropped_or_added(
    case: tuple[int, int, bytes, bytes, list[bytes]], data: st.DataObject
) -> None:
    old, new, old_root, new_root, proof = case
    j = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
    with pytest.raises(ConsistencyProofError, match="proof"):
        verify_consistency(old, new, old_root, new_root, proof[:j] + proof[j + 1 :])
    k = data.draw(st.integers(min_value=0, max_value=len(proof)))
    extra = data.draw(st.sampled_from([old_root, new_root, proof[0], EMPTY_ROOT, bytes(32)]))
    with pytest.raises(ConsistencyProofError, match="proof has"):
        verify_consistency(old, new, old_root, new_root, [*proof[:k], extra, *proof[k:]])


@PROPERTY_SETTINGS
@given(leaf_lists(max_size=150), st.sampled_from(LOG_CLASSES), st.data())
def test_log_agrees_with_the_pure_functions(
    leaves: list[bytes], cls: type[MerkleLog], data: st.DataObject
) -> None:
    n = len(leaves)
    log = cls()
    for i, h in enumerate(leaves):
        assert log.append(h) == i
    assert log.size == n
    assert log.root() == root(leaves)
    for _ in range(5):
        size = data.draw(st.integers(min_value=0, max_value=n), label="size")
        prefix = leaves[:size]
        assert log.root_at(size) == root(prefix)
        old = data.draw(st.integers(min_value=0, max_value=size), label="old")
        assert log.consistency_proof(old, size) == consistency_proof(prefix, old)
        if size == n:
            assert log.consistency_proof(old) == consistency_proof(prefix, old)
        if size:
            index = data.draw(st.integers(min_value=0, max_value=size - 1), label="index")
            assert log.inclusion_proof(index, size) == inclusion_proof(prefix, index)
            assert log.leaf(index) == leaves[index]
            if size == n:
                assert log.inclusion_proof(index) == inclusion_proof(prefix, index)


# --------------------------------------------------------------------------
# Edge cases taken from the Go verifier tests.


def test_single_entry_tree() -> None:
    h = leaf_hash(b"data")
    verify_inclusion(h, 0, 1, [], h)
    with pytest.raises(InclusionProofError):
        verify_inclusion(h, 0, 1, [], leaf_hash(b"other"))
    with pytest.raises(InclusionProofError):
        verify_inclusion(leaf_hash(b"other"), 0, 1, [], h)
    with pytest.raises(InclusionProofError):
        verify_inclusion(b"", 0, 1, [], b"")


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (1, 1), (2, 1)])
def test_inclusion_outside_the_tree(index: int, size: int) -> None:
    with pytest.raises(InclusionProofError, match="outside a tree"):
        verify_inclusion(leaf_hash(b"x"), index, size, [], EMPTY_ROOT)


def test_trivial_consistency() -> None:
    some = leaf_hash(b"some")
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, some, [])
    verify_consistency(1, 1, some, some, [])
    verify_consistency(7, 7, some, some, [])
    for args in [
        (0, 0, EMPTY_ROOT, some, []),  # equal sizes, different roots
        (1, 1, some, EMPTY_ROOT, []),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),  # equal sizes, proof not empty
        (1, 1, some, some, [some]),
        (0, 1, EMPTY_ROOT, some, [some]),  # from size 0, proof not empty
        (0, 1, some, some, []),  # a size-0 tree whose root is not the empty root
        (1, 0, some, EMPTY_ROOT, []),  # shrinking
        (2, 1, some, some, []),
        (1, 2, some, some, []),  # empty proof for a real step
    ]:
        with pytest.raises(ConsistencyProofError):
            verify_consistency(*args)


# --------------------------------------------------------------------------
# Error messages: every failure says what is wrong.

H = RFC_LEAVES
R8 = RFC_ROOTS[8]
P0 = inclusion_proof(H, 0)  # 3 hashes
C68 = consistency_proof(H, 6)  # 3 hashes


def _any(value: object) -> Any:
    """Pass a value of the wrong type past the type checker, as a careless caller would."""
    return value


def _wrong_root_message() -> str:
    computed = root(H[:7])
    return f"computed root {computed[:8].hex()}… does not match the expected root {R8[:8].hex()}…"


INCLUSION_MESSAGES: list[tuple[Callable[[], None], str]] = [
    (lambda: verify_inclusion(H[0], 7, 5, P0, R8), "index 7 is outside a tree of size 5"),
    (lambda: verify_inclusion(H[0], -1, 8, P0, R8), "the index -1 is negative"),
    (lambda: verify_inclusion(H[0], 0, -8, P0, R8), "the tree size -8 is negative"),
    (lambda: verify_inclusion(H[0], _any("0"), 8, P0, R8), "the index must be an integer, not str"),
    (
        lambda: verify_inclusion(H[0], _any(True), 8, P0, R8),
        "the index must be an integer, not bool",
    ),
    (
        lambda: verify_inclusion(H[0], 0, _any(8.0), P0, R8),
        "the tree size must be an integer, not float",
    ),
    (
        lambda: verify_inclusion(H[0][:31], 0, 8, P0, R8),
        "the leaf hash is 31 bytes long; a SHA-256 hash is 32 bytes",
    ),
    (lambda: verify_inclusion(_any(H[0].hex()), 0, 8, P0, R8), "the leaf hash is a str, not bytes"),
    (lambda: verify_inclusion(H[0], 0, 8, P0, R8 + b"\x00"), "the expected root is 33 bytes long"),
    (
        lambda: verify_inclusion(H[0], 0, 8, [P0[0], P0[1][:31], P0[2]], R8),
        "hash 2 of 3 in the proof is 31 bytes long",
    ),
    (
        lambda: verify_inclusion(H[0], 0, 8, _any(b"".join(P0)), R8),
        "the proof must be a list of hashes, not a single bytes value",
    ),
    (
        lambda: verify_inclusion(H[0], 0, 8, _any(3), R8),
        "the proof must be a list of hashes, not int",
    ),
    (
        lambda: verify_inclusion(H[0], 0, 8, P0[:2], R8),
        "proof has 2 hashes, expected 3 for index 0 in a tree of size 8",
    ),
    (
        lambda: verify_inclusion(H[0], 0, 8, [*P0, R8], R8),
        "proof has 4 hashes, expected 3 for index 0 in a tree of size 8",
    ),
    (
        lambda: verify_inclusion(H[0], 0, 8, inclusion_proof(H[:7], 0), R8),
        _wrong_root_message(),
    ),
]

CONSISTENCY_MESSAGES: list[tuple[Callable[[], None], str]] = [
    (
        lambda: verify_consistency(9, 5, R8, R8, []),
        "old size 9 is larger than new size 5; a log cannot shrink",
    ),
    (lambda: verify_consistency(-1, 5, R8, R8, []), "the old size -1 is negative"),
    (lambda: verify_consistency(1, -5, R8, R8, []), "the new size -5 is negative"),
    (lambda: verify_consistency(_any(None), 5, R8, R8, []), "the old size must be an integer"),
    (
        lambda: verify_consistency(8, 8, R8, R8, [R8, R8]),
        "the sizes are equal (8), so the proof must be empty, but it has 2 hashes",
    ),
    (
        lambda: verify_consistency(8, 8, RFC_ROOTS[7], R8, []),
        f"the sizes are equal (8) but the roots differ: old root {RFC_ROOTS[7][:8].hex()}…, "
        f"new root {R8[:8].hex()}…",
    ),
    (
        lambda: verify_consistency(0, 8, EMPTY_ROOT, R8, [R8]),
        "a tree of size 0 is a prefix of every tree, so the proof must be empty, "
        "but it has 1 hashes",
    ),
    (
        lambda: verify_consistency(0, 8, R8, R8, []),
        f"the old root {R8[:8].hex()}… is not the root of the empty tree {EMPTY_ROOT[:8].hex()}…",
    ),
    (
        lambda: verify_consistency(6, 8, RFC_ROOTS[6], R8, []),
        "proof is empty, but growing a tree from size 6 to size 8 needs 3 hashes",
    ),
    (
        lambda: verify_consistency(6, 8, RFC_ROOTS[6], R8, C68[:2]),
        "proof has 2 hashes, expected 3 for growing a tree from size 6 to size 8",
    ),
    (
        lambda: verify_consistency(6, 8, RFC_ROOTS[5], R8, C68),
        f"computed old root {RFC_ROOTS[6][:8].hex()}… does not match the given old root "
        f"{RFC_ROOTS[5][:8].hex()}… for size 6",
    ),
    (
        lambda: verify_consistency(6, 8, RFC_ROOTS[6], RFC_ROOTS[7], C68),
        f"computed new root {R8[:8].hex()}… does not match the given new root "
        f"{RFC_ROOTS[7][:8].hex()}… for size 8",
    ),
    (
        lambda: verify_consistency(4, 8, RFC_ROOTS[3], R8, consistency_proof(H, 4)),
        f"computed new root {node_hash(RFC_ROOTS[3], consistency_proof(H, 4)[0])[:8].hex()}… "
        f"does not match the given new root {R8[:8].hex()}… for size 8; as 4 is a power of "
        f"two the proof starts from the given old root {RFC_ROOTS[3][:8].hex()}…, "
        f"which may be wrong instead",
    ),
    (lambda: verify_consistency(6, 8, R8[:4], R8, C68), "the old root is 4 bytes long"),
    (
        lambda: verify_consistency(6, 8, R8, _any(None), C68),
        "the new root is a NoneType, not bytes",
    ),
    (
        lambda: verify_consistency(6, 8, RFC_ROOTS[6], R8, [*C68[:2], b""]),
        "hash 3 of 3 in the proof is 0 bytes long",
    ),
    (
        lambda: verify_consistency(6, 8, RFC_ROOTS[6], R8, _any("abc")),
        "the proof must be a list of hashes, not a single str value",
    ),
]


@pytest.mark.parametrize(("call", "message"), INCLUSION_MESSAGES)
def test_inclusion_error_messages(call: Callable[[], None], message: str) -> None:
    with pytest.raises(InclusionProofError, match=re.escape(message)) as info:
        call()
    assert isinstance(info.value, VerificationError)
    assert info.value.culprit == "record"


@pytest.mark.parametrize(("call", "message"), CONSISTENCY_MESSAGES)
def test_consistency_error_messages(call: Callable[[], None], message: str) -> None:
    with pytest.raises(ConsistencyProofError, match=re.escape(message)) as info:
        call()
    assert isinstance(info.value, VerificationError)


def test_the_verifier_loops_fail_cleanly_even_without_the_length_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The length check runs first, so the RFC's own "sn is 0" checks are a
    # second line of defence; make the length check accept anything to show
    # that they too raise the right error rather than an IndexError.
    lengths = {"inclusion": 0, "consistency": 0}
    monkeypatch.setattr(merkle, "_inclusion_proof_length", lambda a, b: lengths["inclusion"])
    monkeypatch.setattr(merkle, "_consistency_proof_length", lambda a, b: lengths["consistency"])

    lengths["inclusion"] = 4
    with pytest.raises(InclusionProofError, match="too long"):
        verify_inclusion(H[0], 0, 8, [*P0, R8], R8)
    lengths["inclusion"] = 2
    with pytest.raises(InclusionProofError, match="too short"):
        verify_inclusion(H[0], 0, 8, P0[:2], R8)
    lengths["consistency"] = 4
    with pytest.raises(ConsistencyProofError, match="too long"):
        verify_consistency(6, 8, RFC_ROOTS[6], R8, [*C68, R8])
    lengths["consistency"] = 2
    with pytest.raises(ConsistencyProofError, match="too short"):
        verify_consistency(6, 8, RFC_ROOTS[6], R8, C68[:2])
    lengths["consistency"] = 1
    with pytest.raises(ConsistencyProofError, match="too short"):
        verify_consistency(6, 8, RFC_ROOTS[6], R8, C68[:1])


# --------------------------------------------------------------------------
# Bad arguments to the proof makers are the caller's mistake: UsageError.

PRODUCER_MESSAGES: list[tuple[Callable[[], object], str]] = [
    (lambda: root([H[0], H[1][:31]]), "leaf hash 1 (counting from 0) is 31 bytes long"),
    (lambda: root(_any(b"".join(H))), "not a single bytes value"),
    (lambda: inclusion_proof(H, 8), "index 8 is outside a tree of size 8"),
    (lambda: inclusion_proof([], 0), "index 0 is outside a tree of size 0"),
    (lambda: inclusion_proof(H, -1), "the index -1 is negative"),
    (lambda: consistency_proof(H, 9), "old size 9 is larger than the tree of size 8"),
    (lambda: consistency_proof(H, -2), "the old size -2 is negative"),
    (lambda: MerkleLog().append(b"short"), "the leaf hash is 5 bytes long"),
    (lambda: MerkleLog().leaf(0), "index 0 is outside a tree of size 0"),
    (lambda: MerkleLog().root_at(1), "size 1 is larger than the log, which has 0 leaves"),
    (lambda: MerkleLog().inclusion_proof(0), "index 0 is outside a tree of size 0"),
    (lambda: _log8().inclusion_proof(3, 3), "index 3 is outside a tree of size 3"),
    (lambda: _log8().inclusion_proof(0, 9), "tree size 9 is larger than the log"),
    (lambda: _log8().consistency_proof(5, 4), "old size 5 is larger than the new size 4"),
    (lambda: _log8().consistency_proof(9), "old size 9 is larger than the new size 8"),
    (lambda: _log8().consistency_proof(1, 9), "new size 9 is larger than the log"),
    (lambda: _log8().leaf(-1), "the index -1 is negative"),
]


def _log8() -> MerkleLog:
    log = MerkleLog()
    for h in H:
        log.append(h)
    return log


@pytest.mark.parametrize(("call", "message"), PRODUCER_MESSAGES)
def test_producer_error_messages(call: Callable[[], object], message: str) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        call()


def test_public_names() -> None:
    assert set(merkle.__all__) == {
        "EMPTY_ROOT",
        "MerkleLog",
        "consistency_proof",
        "inclusion_proof",
        "leaf_hash",
        "node_hash",
        "root",
        "verify_consistency",
        "verify_inclusion",
    }
    assert merkle.__doc__ is not None
    assert "RFC 9162" in merkle.__doc__.splitlines()[0]
