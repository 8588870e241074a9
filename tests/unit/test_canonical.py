"""Strict RFC 8785 canonical JSON: the RFC's examples, and every way to be refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from parley.core.canonical import (
    MAX_SAFE_INTEGER,
    canonical_bytes,
    parse_canonical,
    require_bool,
    require_int,
    require_keys,
    require_str,
)
from parley.errors import (
    BodyTooLarge,
    DuplicateKey,
    FloatNotAllowed,
    IntegerOutOfRange,
    InvalidJSON,
    MalformedInput,
    NonCanonicalJSON,
    RemoteError,
    SchemaViolation,
)

# --------------------------------------------------------------------------
# RFC 8785 examples

# RFC 8785 section 3.2.3, "Sorting of Object Properties": the input...
RFC_SORTING_INPUT = r"""{
  "\u20ac": "Euro Sign",
  "\r": "Carriage Return",
  "\ufb33": "Hebrew Letter Dalet With Dagesh",
  "1": "One",
  "\ud83d\ude00": "Emoji: Grinning Face",
  "\u0080": "Control",
  "\u00f6": "Latin Small Letter O With Diaeresis"
}"""
# ...and the order the RFC gives for its property names (UTF-16 code units:
# the emoji's surrogate pair D83D DE00 sorts before U+FB33, unlike code points).
RFC_SORTING_OUTPUT = (
    b'{"\\r":"Carriage Return",'
    b'"1":"One",'
    b'"\xc2\x80":"Control",'
    b'"\xc3\xb6":"Latin Small Letter O With Diaeresis",'
    b'"\xe2\x82\xac":"Euro Sign",'
    b'"\xf0\x9f\x98\x80":"Emoji: Grinning Face",'
    b'"\xef\xac\xb3":"Hebrew Letter Dalet With Dagesh"}'
)

# RFC 8785 section 3.2.2, "Serialization of Primitive Data Types".
RFC_PRIMITIVES_INPUT = r"""{
  "numbers": [333333333.33333329, 1E30, 4.50,
              2e-3, 0.000000000000000000000000001],
  "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
  "literals": [null, true, false]
}"""
RFC_PRIMITIVES_OUTPUT = (
    b'{"literals":[null,true,false],'
    b'"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
    b'"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)
# The same without the numbers, which Parley refuses to sign.
RFC_PRIMITIVES_NO_FLOATS = (
    b'{"literals":[null,true,false],"string":"\xe2\x82\xac$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
)


def test_rfc8785_library_reproduces_the_sorting_example() -> None:
    assert rfc8785.dumps(json.loads(RFC_SORTING_INPUT)) == RFC_SORTING_OUTPUT


def test_rfc8785_sorting_example_through_parley() -> None:
    value = json.loads(RFC_SORTING_INPUT)
    assert canonical_bytes(value) == RFC_SORTING_OUTPUT
    assert parse_canonical(RFC_SORTING_OUTPUT) == value
    assert list(parse_canonical(RFC_SORTING_OUTPUT)) == [
        "\r",
        "1",
        "\u0080",
        "\u00f6",
        "\u20ac",
        "\U0001f600",
        "\ufb33",
    ]
    # Python's own (code point) order puts the emoji last: that spelling is refused.
    code_point_order = json.dumps(
        dict(sorted(value.items())), ensure_ascii=False, separators=(",", ":")
    ).encode()
    assert code_point_order != RFC_SORTING_OUTPUT
    with pytest.raises(NonCanonicalJSON, match="canonical form"):
        parse_canonical(code_point_order)


def test_rfc8785_library_reproduces_the_primitives_example() -> None:
    assert rfc8785.dumps(json.loads(RFC_PRIMITIVES_INPUT)) == RFC_PRIMITIVES_OUTPUT


def test_rfc8785_primitives_example_without_floats_through_parley() -> None:
    value = json.loads(RFC_PRIMITIVES_INPUT)
    del value["numbers"]
    assert value["string"] == '\u20ac$\x0f\nA\'B"\\\\"/'
    assert canonical_bytes(value) == RFC_PRIMITIVES_NO_FLOATS
    assert parse_canonical(RFC_PRIMITIVES_NO_FLOATS) == value


def test_rfc8785_primitives_example_with_floats_is_refused() -> None:
    with pytest.raises(FloatNotAllowed, match=r"333333333\.3333333"):
        parse_canonical(RFC_PRIMITIVES_OUTPUT)
    with pytest.raises(FloatNotAllowed):
        canonical_bytes(json.loads(RFC_PRIMITIVES_INPUT))


# JCS string escaping (RFC 8785 3.2.2.2, i.e. ECMAScript JSON.stringify):
# the five short escapes, \u00xx in lowercase hex for the other C0 controls,
# '"' and '\' escaped; everything else, including '/', DEL, U+2028 and U+2029,
# as raw UTF-8.
_SHORT_ESCAPES = {0x08: b"\\b", 0x09: b"\\t", 0x0A: b"\\n", 0x0C: b"\\f", 0x0D: b"\\r"}


@pytest.mark.parametrize("code", range(0x20))
def test_control_characters_are_escaped_as_jcs_requires(code: int) -> None:
    expected = b'"' + _SHORT_ESCAPES.get(code, b"\\u00%02x" % code) + b'"'
    assert canonical_bytes(chr(code)) == expected
    assert parse_canonical(expected) == chr(code)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('"', b'"\\""'),
        ("\\", b'"\\\\"'),
        ("/", b'"/"'),
        ("\x7f", b'"\x7f"'),
        ("\u2028", b'"\xe2\x80\xa8"'),
        ("\u2029", b'"\xe2\x80\xa9"'),
        ("\u00e9", b'"\xc3\xa9"'),
        ("\U0001f600", b'"\xf0\x9f\x98\x80"'),
    ],
)
def test_other_characters_are_written_raw_or_minimally_escaped(text: str, expected: bytes) -> None:
    assert canonical_bytes(text) == expected
    assert parse_canonical(expected) == text


def test_integers_and_literals_are_written_as_jcs_requires() -> None:
    assert canonical_bytes([0, -1, MAX_SAFE_INTEGER, -MAX_SAFE_INTEGER, True, False, None]) == (
        b"[0,-1,9007199254740991,-9007199254740991,true,false,null]"
    )


# --------------------------------------------------------------------------
# One test per rejection class


@pytest.mark.parametrize(
    "data",
    [b'{"a":1,"a":1}', b'{"a":1,"a":2}', b'{"x":{"k":[],"k":{}}}', b'[{"a":null,"b":0,"a":0}]'],
)
def test_duplicate_keys_are_refused(data: bytes) -> None:
    with pytest.raises(DuplicateKey, match="appears twice"):
        parse_canonical(data)


@pytest.mark.parametrize(
    "data", [b"1.0", b"1e3", b"1E3", b"-0.5", b"0.0", b'{"a":2.5}', b"[1,2e0]", b"1e-7"]
)
def test_floats_are_refused(data: bytes) -> None:
    with pytest.raises(FloatNotAllowed, match="not an integer"):
        parse_canonical(data)


@pytest.mark.parametrize("value", [1.0, 0.5, -0.0, {"a": [1.5]}])
def test_floats_cannot_be_serialised(value: Any) -> None:
    with pytest.raises(FloatNotAllowed):
        canonical_bytes(value)


@pytest.mark.parametrize(
    "data",
    [
        str(2**53).encode(),
        str(-(2**53)).encode(),
        b"9" * 400,
        b"-" + b"1" * 400,
        b'{"seq":18446744073709551616}',
    ],
)
def test_integers_beyond_2_pow_53_are_refused(data: bytes) -> None:
    with pytest.raises(IntegerOutOfRange, match=r"beyond \+/-2\^53"):
        parse_canonical(data)


def test_integers_at_the_edge_are_accepted() -> None:
    assert parse_canonical(b"9007199254740991") == 2**53 - 1
    assert parse_canonical(b"-9007199254740991") == -(2**53 - 1)
    with pytest.raises(IntegerOutOfRange):
        canonical_bytes(2**53)
    with pytest.raises(IntegerOutOfRange):
        canonical_bytes({"a": [-(2**53)]})


@pytest.mark.parametrize(
    "data",
    [
        b' {"a":1}',  # leading whitespace
        b'{"a":1} ',  # trailing whitespace
        b'{"a":1}\n',
        b'{"a": 1}',  # whitespace between tokens
        b'{"a":1 ,"b":2}',
        b'{"b":1,"a":2}',  # keys not sorted
        b'"\\/"',  # escaped solidus
        b'"\\u0041"',  # escaped letter
        b'"\\u00e9"',  # escaped non-ASCII
        b'"\\u000F"',  # uppercase hex escape
        b'"\\u0008"',  # long form of \b
        b'"\\u2028"',  # escaped line separator
        b"\xef\xbb\xbf{}",  # leading byte order mark
        b"-0",  # negative zero
        b'"\\ud83d\\ude00"',  # escaped emoji
    ],
)
def test_non_canonical_spellings_are_refused(data: bytes) -> None:
    with pytest.raises(NonCanonicalJSON):
        parse_canonical(data)


def test_non_canonical_refusal_says_where() -> None:
    with pytest.raises(NonCanonicalJSON, match=r"not in RFC 8785 canonical form.*byte 5"):
        parse_canonical(b'{"a": 1}', what="test body")
    with pytest.raises(NonCanonicalJSON, match="byte order mark"):
        parse_canonical(b"\xef\xbb\xbf{}")


@pytest.mark.parametrize("data", [b"NaN", b"Infinity", b"-Infinity", b'{"a":NaN}', b"[Infinity]"])
def test_nan_and_infinity_are_refused(data: bytes) -> None:
    with pytest.raises(InvalidJSON, match="is not JSON"):
        parse_canonical(data)


@pytest.mark.parametrize(
    "data",
    [
        b'"\xff"',  # never valid in UTF-8
        b'"\xc3"',  # truncated sequence
        b'"\xc0\xaf"',  # overlong '/'
        b'"\xed\xa0\x80"',  # encoded surrogate
        b'{"\x80":1}',  # stray continuation byte
    ],
)
def test_invalid_utf8_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidJSON, match="not valid UTF-8"):
        parse_canonical(data, what="test body")


def test_lone_surrogate_escape_is_refused_as_malformed() -> None:
    # Valid JSON syntax, but no UTF-8 string can hold it: never a UnicodeError.
    with pytest.raises(MalformedInput):
        parse_canonical(b'"\\ud800"')
    with pytest.raises(MalformedInput):
        parse_canonical(b'{"\\udfff":1}')


@pytest.mark.parametrize("data", [b"", b"{", b"[1,]", b"{}x", b"{'a':1}", b'"\x01"', b"tru"])
def test_not_json_is_refused(data: bytes) -> None:
    with pytest.raises(InvalidJSON):
        parse_canonical(data)


def test_body_over_the_limit_is_refused_before_parsing() -> None:
    body = b'"' + b"a" * 98 + b'"'
    assert len(body) == 100
    assert parse_canonical(body, max_size=100) == "a" * 98
    with pytest.raises(BodyTooLarge, match="the envelope is 100 bytes; the limit is 99 bytes"):
        parse_canonical(body, max_size=99, what="envelope")
    # Size comes first: even bytes that are not JSON at all are refused for size.
    with pytest.raises(BodyTooLarge):
        parse_canonical(b"\xff" * 1000, max_size=10)


@pytest.mark.parametrize(
    "data",
    [
        b"[" * 100_000,
        b"[" * 100_000 + b"]" * 100_000,
        b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
        b"[" * 5_000 + b"]" * 5_000,
    ],
    ids=["open-lists", "closed-lists", "objects", "5000-lists"],
)
def test_deep_nesting_is_malformed_input_not_recursion_error(data: bytes) -> None:
    with pytest.raises(MalformedInput, match="nested too deeply"):
        parse_canonical(data)


def test_every_refusal_is_the_peers_fault() -> None:
    for data in (b'{"a":1,"a":2}', b"1.5", b"9" * 20, b" 1", b"NaN", b"\xff"):
        with pytest.raises(RemoteError):
            parse_canonical(data)


# --------------------------------------------------------------------------
# Field accessors


def test_accessors_name_the_field_and_refuse_wrong_types() -> None:
    obj = {"n": True, "s": "x" * 11, "b": 1}
    with pytest.raises(SchemaViolation, match="seq must be an integer"):
        require_int({"seq": True}, "seq", "envelope")
    with pytest.raises(SchemaViolation, match="n must be an integer"):
        require_int(obj, "n", "thing")
    with pytest.raises(SchemaViolation, match="longer than 10"):
        require_str(obj, "s", "thing", max_len=10)
    with pytest.raises(SchemaViolation, match="b must be true or false"):
        require_bool(obj, "b", "thing")
    with pytest.raises(SchemaViolation, match="lacks the field"):
        require_keys(obj, "thing", {"n", "s", "b", "z"})
    with pytest.raises(SchemaViolation, match="unexpected field"):
        require_keys(obj, "thing", {"n", "s"})


# --------------------------------------------------------------------------
# Properties

_SAFE_INTS = st.integers(min_value=-MAX_SAFE_INTEGER, max_value=MAX_SAFE_INTEGER)
json_values = st.recursive(
    st.none() | st.booleans() | _SAFE_INTS | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def _same(a: Any, b: Any) -> bool:
    """Equality that does not confuse True with 1 (as ``==`` does)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@given(json_values)
def test_round_trip(value: Any) -> None:
    data = canonical_bytes(value)
    assert _same(parse_canonical(data), value)
    assert canonical_bytes(parse_canonical(data)) == data


_ATOM_BYTES = frozenset(b"0123456789-truefalsn")


def _gaps_between_tokens(data: bytes) -> list[int]:
    """Offsets where inserting a byte falls between two tokens of ``data``.

    Excluded: inside a string (after its opening quote, up to and including
    its closing quote) and inside a number or a literal.
    """
    inside = [False] * (len(data) + 1)
    in_string = escaped = False
    for i, byte in enumerate(data):
        if in_string:
            inside[i] = True
            if escaped:
                escaped = False
            elif byte == ord("\\"):
                escaped = True
            elif byte == ord('"'):
                in_string = False
        elif byte == ord('"'):
            in_string = True
        elif i > 0 and data[i - 1] in _ATOM_BYTES and byte in _ATOM_BYTES:
            inside[i] = True
    return [i for i, is_inside in enumerate(inside) if not is_inside]


def test_gaps_between_tokens_helper() -> None:
    # The helper itself, on a hand-checked example.
    assert _gaps_between_tokens(b'{"a b":12,"c":[true]}') == [
        0,
        1,
        6,
        7,
        9,
        10,
        13,
        14,
        15,
        19,
        20,
        21,
    ]


@given(json_values, st.data())
def test_a_space_between_tokens_is_refused(value: Any, data: st.DataObject) -> None:
    canonical = canonical_bytes(value)
    gaps = _gaps_between_tokens(canonical)
    at = data.draw(st.sampled_from(gaps), label="offset")
    spaced = canonical[:at] + b" " + canonical[at:]
    with pytest.raises(NonCanonicalJSON):
        parse_canonical(spaced)


@given(_SAFE_INTS.filter(lambda n: abs(n) >= 10), st.data())
def test_a_space_inside_a_number_is_refused(number: int, data: st.DataObject) -> None:
    text = str(number).encode()
    at = data.draw(st.integers(min_value=1, max_value=len(text) - 1))
    with pytest.raises(InvalidJSON):
        parse_canonical(b"[" + text[:at] + b" " + text[at:] + b"]")


# The C encoder serves values where its output is RFC 8785's; rfc8785 is the
# reference. Keys and strings are drawn from the whole of Unicode (surrogates
# excluded), so keys that sort differently in UTF-16 and code-point order
# (U+E000..U+FFFF against astral characters) are reached.
_texts = st.text(st.characters(codec="utf-8"), max_size=8)
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1) | _texts,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            _texts | st.sampled_from(["\ue000", "\U0001f600", "a\uffff", "a\U00010000"]),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(_json_values)
def test_canonical_bytes_equals_the_rfc8785_reference(value: Any) -> None:
    expected = rfc8785.dumps(value)
    assert canonical_bytes(value) == expected
    assert parse_canonical(expected) == value


def test_keys_that_sort_apart_in_utf16_use_the_reference_order() -> None:
    value = {"\ue000": 1, "\U0001f600": 2}
    # UTF-16: U+1F600 is D83D DE00, which sorts before E000.
    assert canonical_bytes(value) == '{"\U0001f600":2,"\ue000":1}'.encode()
    assert parse_canonical(canonical_bytes(value)) == value
