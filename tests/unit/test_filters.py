"""Subscription filters (fabric.filters): tag expressions, the SQL subset, errors and limits."""

from __future__ import annotations

import dataclasses
import itertools
import operator
import string
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.store.record import tag_hash as store_tag_hash
from fabric import errors
from fabric.errors import InvalidFilterError
from fabric.filters import (
    MAX_FILTER_DEPTH,
    MAX_FILTER_LENGTH,
    MAX_IN_VALUES,
    TAGS_PROPERTY,
    SqlFilter,
    TagFilter,
    compile_sql,
    compile_tags,
    parse_tags,
    tag_hash,
)
from fabric.protocol.codes import ResponseCode
from tests.unit.test_layers import ROOT, allowed, imports

# -- layer and codes -------------------------------------------------------------------------


def test_filters_is_base_layer() -> None:
    path = ROOT / "fabric" / "filters.py"
    bad = {
        n for n in imports(path) if not allowed(n, ("msgspec", "fabric.protocol", "fabric.errors"))
    }
    assert not bad, f"filters.py imports {sorted(bad)}"


def test_subscription_parse_failed_maps_to_invalid_filter_error() -> None:
    assert ResponseCode.SUBSCRIPTION_PARSE_FAILED == 23
    exc = errors.from_response(
        23, "unexpected 'AND' at column 3: expected a value", address="tcp://h:1"
    )
    assert type(exc) is InvalidFilterError
    assert exc.code is ResponseCode.SUBSCRIPTION_PARSE_FAILED
    assert not exc.retryable
    assert str(exc).startswith("SUBSCRIPTION_PARSE_FAILED: unexpected 'AND'")
    local = InvalidFilterError("bad", expression="a =", column=4)
    assert (local.expression, local.column, local.code) == ("a =", 4, None)
    assert errors.to_response(local) == (ResponseCode.SUBSCRIPTION_PARSE_FAILED, "bad")
    assert "InvalidFilterError" in errors.__all__


# -- tags ------------------------------------------------------------------------------------

#: "plumless" and "buckeroo" are a known CRC32 collision.
COLLIDING = ("plumless", "buckeroo")


@pytest.mark.parametrize("tags", ["", "A", "TagA", "tag with spaces", "標籤", "é", *COLLIDING])
def test_tag_hash_agrees_with_the_store(tags: str) -> None:
    assert tag_hash(tags) == store_tag_hash(tags)


@given(st.text())
def test_tag_hash_agrees_with_the_store_on_any_text(tags: str) -> None:
    assert tag_hash(tags) == store_tag_hash(tags)


def test_tag_hash_values() -> None:
    assert tag_hash("") == 0
    assert tag_hash("TagA") == 0x07596A98
    assert tag_hash("é") == 0x0E048D3E  # CRC32 of the UTF-8 bytes c3 a9
    assert tag_hash(COLLIDING[0]) == tag_hash(COLLIDING[1])


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        (None, None),
        ("", None),
        ("*", None),
        ("  *  ", None),
        (" \t ", None),
        ("TagA", {"TagA"}),
        ("TagA || TagB", {"TagA", "TagB"}),
        ("  TagA||TagB  ||TagC ", {"TagA", "TagB", "TagC"}),
        ("A || A", {"A"}),
        ("tag with spaces || 標籤", {"tag with spaces", "標籤"}),
    ],
)
def test_parse_tags(expression: str | None, expected: set[str] | None) -> None:
    result = parse_tags(expression)
    assert result == (None if expected is None else frozenset(expected))


@pytest.mark.parametrize(
    ("expression", "fragment", "column"),
    [
        ("A || || B", "empty tag at column 6", 6),
        ("A ||", "empty tag at column 5", 5),
        ("|| A", "empty tag at column 1", 1),
        ("A ||   || B", "empty tag at column 8", 8),  # where the tag should be
        ("A | B", "single '|' at column 3: tags are separated by '||'", 3),
        ("A |||B", "single '|' at column 5", 5),
        ("A || *", "'*' in a tag at column 6: '*' alone selects every message", 6),
        ("*A", "'*' in a tag at column 1", 1),
        ("A || B*", "'*' in a tag at column 7", 7),
    ],
)
def test_parse_tags_rejects(expression: str, fragment: str, column: int) -> None:
    with pytest.raises(InvalidFilterError) as info:
        parse_tags(expression)
    assert fragment in str(info.value)
    assert info.value.column == column
    assert info.value.expression == expression


def test_parse_tags_length_limit() -> None:
    assert parse_tags("A" * MAX_FILTER_LENGTH) == frozenset({"A" * MAX_FILTER_LENGTH})
    with pytest.raises(InvalidFilterError, match="4097 characters, more than the limit of 4096"):
        parse_tags("A" * (MAX_FILTER_LENGTH + 1))


def test_tag_filter_matches() -> None:
    f = compile_tags(" TagB || TagA ")
    assert f.tags == frozenset({"TagA", "TagB"})
    assert f.hashes == frozenset({tag_hash("TagA"), tag_hash("TagB")})
    assert f.expression == "TagA || TagB"
    assert not f.matches_all
    assert f.matches_hash(tag_hash("TagA")) and f.matches_hash(tag_hash("TagB"))
    assert not f.matches_hash(tag_hash("TagC"))
    assert not f.matches_hash(0)  # an untagged message
    assert f.matches_tags("TagA") and not f.matches_tags("TagC")
    assert not f.matches_tags("") and not f.matches_tags(None)
    assert not f.matches_tags("taga")  # tags are case-sensitive


def test_tag_filter_collision_needs_the_exact_check() -> None:
    f = compile_tags(COLLIDING[0])
    assert f.matches_hash(tag_hash(COLLIDING[1]))
    assert f.matches_tags(COLLIDING[0])
    assert not f.matches_tags(COLLIDING[1])


@pytest.mark.parametrize("expression", [None, "", "*", " * "])
def test_tag_filter_star_matches_everything(expression: str | None) -> None:
    f = compile_tags(expression)
    assert f.matches_all and f.expression == "*" and f.tags == frozenset()
    assert f.hashes == frozenset()
    assert f.matches_hash(0) and f.matches_hash(12345)
    assert f.matches_tags("") and f.matches_tags(None) and f.matches_tags("X")


def test_tag_filter_is_frozen_and_hashable() -> None:
    a, b = compile_tags("A || B"), compile_tags("B||A")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != compile_tags("A")
    assert compile_tags("*") == TagFilter()
    assert TagFilter(frozenset({"B", "A"})) == a
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.tags = frozenset()  # type: ignore[misc]


@pytest.mark.parametrize(
    ("tag", "fragment"),
    [("", "empty tag"), ("A*", "'*'"), ("A|B", "single '|'"), (" A", "whitespace")],
)
def test_tag_filter_checks_tags_given_directly(tag: str, fragment: str) -> None:
    with pytest.raises(InvalidFilterError, match=fragment):
        TagFilter(frozenset({"ok", tag}))


@given(st.text(max_size=60))
def test_parse_tags_never_fails_otherwise(text: str) -> None:
    try:
        tags = parse_tags(text)
    except InvalidFilterError as exc:
        assert exc.column is not None and 1 <= exc.column <= len(text) + 1
        return
    if tags is not None:
        assert tags and all(tag and "*" not in tag and "|" not in tag for tag in tags)
        assert compile_tags(text).expression == " || ".join(sorted(tags))


# -- SQL: evaluation -------------------------------------------------------------------------

PROPS = {
    "a": "7",
    "neg": "-3",
    "price": "12.5",
    "zero": "0",
    "region": "eu",
    "quote": "it's",
    "empty": "",
    "flag": "TRUE",
    "off": "false",
    "word": "abc",
    "x.y": "1",
    "big": "123456789012345678901234567890",
    "TAGS": "TagA",
}

CASES: list[tuple[str, bool]] = [
    # = <> != with numbers
    ("a = 7", True),
    ("a = 7.0", True),
    ("a = 8", False),
    ("a <> 8", True),
    ("a != 7", False),
    ("price = 12.5", True),
    ("neg = -3", True),
    ("zero = 0", True),
    ("big = 123456789012345678901234567890", True),
    ("big = 123456789012345678901234567891", False),
    # ordering
    ("a > 5", True),
    ("a > 7", False),
    ("a >= 7", True),
    ("a < 7", False),
    ("a <= 7", True),
    ("a < 7.5", True),
    ("neg < -2.5", True),
    ("price > 12", True),
    ("price >= 12.50", True),
    ("a>5", True),
    ("a>-5", True),
    # a property that is not a number: numeric comparisons are FALSE, <> is NOT =
    ("word = 1", False),
    ("word < 1", False),
    ("word > 1", False),
    ("word >= 1", False),
    ("word <> 1", True),
    ("NOT word > 1", True),
    ("empty = 0", False),
    ("region BETWEEN 1 AND 2", False),
    ("region NOT BETWEEN 1 AND 2", True),
    # strings
    ("region = 'eu'", True),
    ("region = 'EU'", False),
    ("region <> 'us'", True),
    ("region != 'eu'", False),
    ("quote = 'it''s'", True),
    ("empty = ''", True),
    ("a = '7'", True),
    ("a = '7.0'", False),  # a string literal compares text
    ("price = '12.50'", False),
    ("price = 12.50", True),
    # booleans
    ("flag = TRUE", True),
    ("flag = true", True),
    ("flag = FALSE", False),
    ("off = FALSE", True),
    ("off <> TRUE", True),
    ("word = TRUE", False),
    ("word = FALSE", False),
    ("word <> TRUE", True),
    # IN
    ("region IN ('eu', 'us')", True),
    ("region IN ('us')", False),
    ("region NOT IN ('us', 'cn')", True),
    ("region NOT IN ('eu')", False),
    ("a IN (1, 7, 9)", True),
    ("a IN (7.0)", True),
    ("a IN ('x', 7)", True),
    ("word IN (1, 2)", False),
    ("flag IN (TRUE)", True),
    ("off IN ('x', TRUE)", False),
    ("off IN ('x', FALSE)", True),
    ("TAGS IN ('TagA', 'TagB')", True),
    # BETWEEN (inclusive)
    ("a BETWEEN 1 AND 10", True),
    ("a BETWEEN 7 AND 7", True),
    ("a BETWEEN 8 AND 10", False),
    ("a BETWEEN 10 AND 1", False),
    ("a NOT BETWEEN 8 AND 10", True),
    ("price BETWEEN 12.5 AND 12.6", True),
    ("neg BETWEEN -5 AND -3", True),
    # IS NULL
    ("missing IS NULL", True),
    ("missing IS NOT NULL", False),
    ("a IS NULL", False),
    ("a IS NOT NULL", True),
    ("empty IS NOT NULL", True),
    # identifiers, keywords in any case, TAGS
    ("x.y = 1", True),
    ("TAGS = 'TagA'", True),
    ("TAGS <> 'TagA'", False),
    ("tags = 'TagA'", False),  # identifiers are case-sensitive: tags is another property
    ("a = 7 and region = 'eu'", True),
    ("a = 7 AnD region = 'us' oR flag = tRuE", True),
    ("a not in (1) and a is not null", True),
    ("a nOt BeTwEeN 1 aNd 2", True),
    # logic and parentheses
    ("a = 7 AND region = 'eu'", True),
    ("a = 7 AND region = 'us'", False),
    ("a = 1 OR region = 'eu'", True),
    ("NOT a = 7", False),
    ("NOT NOT a = 7", True),
    ("NOT (a = 7 AND region = 'us')", True),
    ("((a = 7))", True),
    ("a = 1 OR a = 2 OR a = 3 OR a = 7", True),
    ("a = 7 AND a > 1 AND a < 10 AND region = 'eu' AND x.y = 1", True),
    ("a = 7 AND a > 1 AND a < 10 AND region = 'eu' AND x.y = 2", False),
    # UNKNOWN (missing property) never matches, whichever way it is negated
    ("missing = 1", False),
    ("missing <> 1", False),
    ("NOT missing = 1", False),
    ("missing > 1", False),
    ("NOT missing > 1", False),
    ("missing IN ('a')", False),
    ("missing NOT IN ('a')", False),
    ("missing BETWEEN 1 AND 2", False),
    ("missing NOT BETWEEN 1 AND 2", False),
    ("missing = TRUE", False),
    ("missing = 'x' OR a = 7", True),
    ("missing = 'x' AND a = 7", False),
]


@pytest.mark.parametrize(("expression", "expected"), CASES, ids=[c[0] for c in CASES])
def test_sql_evaluation(expression: str, expected: bool) -> None:
    assert compile_sql(expression).matches(PROPS) is expected


def test_tags_is_absent_for_an_untagged_message() -> None:
    f = compile_sql("TAGS IS NULL OR TAGS = 'B'")
    assert f.matches({})
    assert f.matches({TAGS_PROPERTY: "B"})
    assert not f.matches({TAGS_PROPERTY: "A"})
    assert TAGS_PROPERTY == "TAGS"


def test_numbers_in_property_values() -> None:
    f = compile_sql("v = 100")
    for text in ("100", "+100", "100.0", "1e2", "1E+2", "100.", "0100"):
        assert f.matches({"v": text}), text
    for text in ("1_00", " 100", "100 ", "\u0661\u0660\u0660", "0x64", "inf", "nan", "", "1e", "."):
        assert not f.matches({"v": text}), text
        assert compile_sql("v <> 100").matches({"v": text}), text
    assert compile_sql("v < 1").matches({"v": ".5"})
    assert compile_sql("v > 1").matches({"v": "9" * 5000})  # past int()'s digit limit


# Three-valued logic: T, F and U (UNKNOWN: a missing property) as expressions.
VALUES = {"T": "t = 1", "F": "f = 1", "U": "u = 1"}
TRUTH_PROPS = {"t": "1", "f": "0"}


def _value(expression: str) -> str:
    """TRUE, FALSE or UNKNOWN, observed through the public API only."""
    if compile_sql(expression).matches(TRUTH_PROPS):
        return "T"
    if compile_sql(f"NOT ({expression})").matches(TRUTH_PROPS):
        return "F"
    return "U"


AND_TABLE = {
    ("T", "T"): "T", ("T", "F"): "F", ("T", "U"): "U",
    ("F", "T"): "F", ("F", "F"): "F", ("F", "U"): "F",
    ("U", "T"): "U", ("U", "F"): "F", ("U", "U"): "U",
}  # fmt: skip
OR_TABLE = {
    ("T", "T"): "T", ("T", "F"): "T", ("T", "U"): "T",
    ("F", "T"): "T", ("F", "F"): "F", ("F", "U"): "U",
    ("U", "T"): "T", ("U", "F"): "U", ("U", "U"): "U",
}  # fmt: skip


@pytest.mark.parametrize("value", ["T", "F", "U"])
def test_three_valued_not(value: str) -> None:
    assert _value(VALUES[value]) == value
    assert _value(f"NOT {VALUES[value]}") == {"T": "F", "F": "T", "U": "U"}[value]


@pytest.mark.parametrize(("left", "right"), list(AND_TABLE))
def test_three_valued_and_or(left: str, right: str) -> None:
    lhs, rhs = VALUES[left], VALUES[right]
    assert _value(f"{lhs} AND {rhs}") == AND_TABLE[left, right]
    assert _value(f"{lhs} OR {rhs}") == OR_TABLE[left, right]
    # The n-ary chains agree with the binary table.
    assert _value(f"{lhs} AND {rhs} AND t = 1") == AND_TABLE[left, right]
    assert _value(f"{lhs} OR {rhs} OR f = 1") == OR_TABLE[left, right]


@pytest.mark.parametrize(
    ("expression", "reference"),
    [
        ("NOT p = 1 AND q = 1 OR r = 1", lambda p, q, r: ((not p) and q) or r),
        ("p = 1 OR q = 1 AND r = 1", lambda p, q, r: p or (q and r)),
        ("p = 1 AND q = 1 OR r = 1", lambda p, q, r: (p and q) or r),
        ("NOT p = 1 OR q = 1", lambda p, q, r: (not p) or q),
        ("NOT (p = 1 OR q = 1) AND r = 1", lambda p, q, r: (not (p or q)) and r),
        ("p = 1 AND (q = 1 OR r = 1)", lambda p, q, r: p and (q or r)),
        ("NOT p = 1 AND NOT q = 1 OR NOT r = 1", lambda p, q, r: (not p and not q) or not r),
    ],
)
def test_precedence(expression: str, reference: Callable[[bool, bool, bool], bool]) -> None:
    f = compile_sql(expression)
    for p, q, r in itertools.product((False, True), repeat=3):
        props = {"p": str(int(p)), "q": str(int(q)), "r": str(int(r))}
        assert f.matches(props) is bool(reference(p, q, r)), (p, q, r)


def test_between_and_binds_to_between() -> None:
    f = compile_sql("a BETWEEN 1 AND 5 AND b = 1")
    assert f.matches({"a": "3", "b": "1"})
    assert not f.matches({"a": "3", "b": "2"})
    assert not f.matches({"a": "6", "b": "1"})


def test_sql_filter_object() -> None:
    f = compile_sql("a > 1 AND (TAGS = 'x' OR b.c IS NULL)")
    assert isinstance(f, SqlFilter)
    assert f.expression == "a > 1 AND (TAGS = 'x' OR b.c IS NULL)"
    assert f.names == frozenset({"a", "TAGS", "b.c"})
    assert f == SqlFilter("a > 1 AND (TAGS = 'x' OR b.c IS NULL)")
    assert len({f, compile_sql(f.expression)}) == 1
    assert f != compile_sql("a > 2")
    assert repr(f) == "SqlFilter(\"a > 1 AND (TAGS = 'x' OR b.c IS NULL)\")"


# -- SQL: errors and limits ------------------------------------------------------------------

BAD: list[tuple[str, str, int | None]] = [
    ("", "the SQL filter expression is empty", None),
    ("  \t ", "the SQL filter expression is empty", None),
    ("a = 1 OR b = AND", "unexpected 'AND' at column 14: expected a value", 14),
    ("a", "unexpected end of expression at column 2: expected a comparison operator", 2),
    ("a = ", "unexpected end of expression at column 5: expected a value", 5),
    ("a = NULL", "at column 5: expected a value (test for a missing property with IS NULL)", 5),
    ("a > 'x'", "unexpected string 'x' at column 5: expected a number", 5),
    ("a <= TRUE", "unexpected 'TRUE' at column 6: expected a number", 6),
    ("a BETWEEN 'x' AND 2", "unexpected string 'x' at column 11: expected a number", 11),
    ("a BETWEEN 1 OR 2", "unexpected 'OR' at column 13: expected AND between the bounds", 13),
    ("a BETWEEN 1 AND", "unexpected end of expression at column 16: expected a number", 16),
    ("(a = 1", "unexpected end of expression at column 7: expected AND, OR or ')'", 7),
    ("(a = 1 b = 2)", "unexpected 'b' at column 8: expected AND, OR or ')'", 8),
    ("a = 1)", "unexpected ')' at column 6: expected AND, OR or the end of the expression", 6),
    ("a = 1 b = 2", "unexpected 'b' at column 7: expected AND, OR or the end", 7),
    ("a = 1 AND", "unexpected end of expression at column 10: expected a property name, NOT", 10),
    ("AND a = 1", "unexpected 'AND' at column 1: expected a property name, NOT or '('", 1),
    ("5 = a", "unexpected '5' at column 1: expected a property name", 1),
    ("'a' = a", "unexpected string 'a' at column 1: expected a property name", 1),
    ("a = b", "unexpected 'b' at column 5: expected a value", 5),
    ("TRUE", "unexpected 'TRUE' at column 1: expected a property name", 1),
    ("NOT", "unexpected end of expression at column 4: expected a property name", 4),
    ("a == 1", "unexpected '=' at column 4: expected a value", 4),
    ("a IN ()", "unexpected ')' at column 7: expected a value", 7),
    ("a IN 'x'", "unexpected string 'x' at column 6: expected '(' after IN", 6),
    ("a IN ('x' 'y')", "unexpected string 'y' at column 11: expected ',' or ')'", 11),
    ("a IN ('x',", "unexpected end of expression at column 11: expected a value", 11),
    ("a IN (NULL)", "expected a value (test for a missing property with IS NULL)", 7),
    ("a NOT = 1", "unexpected '=' at column 7: expected IN or BETWEEN after NOT", 7),
    ("a IS", "unexpected end of expression at column 5: expected NULL or NOT NULL", 5),
    ("a IS 1", "unexpected '1' at column 6: expected NULL or NOT NULL", 6),
    ("a IS NOT", "unexpected end of expression at column 9: expected NULL", 9),
    ("a LIKE 'x'", "unexpected 'LIKE' at column 3: expected a comparison operator", 3),
    ('a = "x"', "unexpected character '\"' at column 5: strings are in single quotes", 5),
    ("a = 'x", "unterminated string starting at column 5", 5),
    ("a = 'it''s", "unterminated string starting at column 5", 5),
    ("a = -", "unexpected character '-' at column 5", 5),
    ("a = - 1", "unexpected character '-' at column 5", 5),
    ("a = .5", "unexpected character '.' at column 5", 5),
    ("a = 1e3", "unexpected 'e3' at column 6: expected AND, OR or the end", 6),
    ("a # 1", "unexpected character '#' at column 3", 3),
    ("a\u00a0= 1", "unexpected character U+00A0 at column 2", 2),
    ("é = 1", "unexpected character 'é' at column 1", 1),
    ("`a` = 1", "unexpected character '`' at column 1", 1),
    ("a = 1 && b = 2", "unexpected character '&' at column 7", 7),
    ("*", "unexpected character '*' at column 1", 1),
    ("AND = 1", "unexpected 'AND' at column 1", 1),
    ("null IS NULL", "unexpected 'NULL' at column 1: expected a property name", 1),
    ("a = 'x" + "y" * 100 + "' b", "unexpected 'b' at column 109", 109),
    ("a = '" + "y" * 100 + "' AND", "end of expression at column 111", 111),
    ("a = 1 AND b = '" + "y" * 100 + "' c", "unexpected 'c'", None),
    ("a = 1 OR " + "z" * 100, "unexpected end of expression", None),
    ("a IN (1) " + "q" * 100, "unexpected '" + "q" * 29 + "...' at column 10", 10),
]


@pytest.mark.parametrize(("expression", "fragment", "column"), BAD, ids=[b[0][:40] for b in BAD])
def test_sql_rejects(expression: str, fragment: str, column: int | None) -> None:
    with pytest.raises(InvalidFilterError) as info:
        compile_sql(expression)
    assert fragment in str(info.value)
    if column is not None:
        assert info.value.column == column
    assert info.value.code is None and info.value.address is None


def _nested_parens(depth: int) -> str:
    return "(" * depth + "a = 1" + ")" * depth


def _nested_nots(depth: int) -> str:
    return "NOT " * depth + "a = 1"


@pytest.mark.parametrize("nest", [_nested_parens, _nested_nots])
def test_depth_limit(nest: Callable[[int], str]) -> None:
    assert compile_sql(nest(MAX_FILTER_DEPTH)).matches({"a": "1"})  # an even number of NOTs
    with pytest.raises(InvalidFilterError, match=f"nests deeper than {MAX_FILTER_DEPTH} levels"):
        compile_sql(nest(MAX_FILTER_DEPTH + 1))


def test_mixed_depth_counts_parentheses_and_not() -> None:
    ok = "(NOT " * (MAX_FILTER_DEPTH // 2) + "a = 1" + ")" * (MAX_FILTER_DEPTH // 2)
    compile_sql(ok)
    with pytest.raises(InvalidFilterError) as info:
        compile_sql("NOT " + ok)
    assert "deeper than 64" in str(info.value)


def test_deep_nesting_is_an_error_not_a_recursion_error() -> None:
    for text in (_nested_parens(2000), _nested_nots(1000), "(" * 4000):
        with pytest.raises(InvalidFilterError, match="deeper than"):
            compile_sql(text)


def test_long_chains_do_not_nest() -> None:
    # AND and OR chains are loops, in the parser and in the evaluation: no depth limit.
    chain = " AND ".join(["a=1"] * 500)
    assert len(chain) <= MAX_FILTER_LENGTH
    assert compile_sql(chain).matches({"a": "1"})
    assert not compile_sql(chain + " AND b=1").matches({"a": "1"})
    either = " OR ".join(f"a={i}" for i in range(400))
    assert len(either) <= MAX_FILTER_LENGTH
    assert compile_sql(either).matches({"a": "399"})
    assert not compile_sql(either).matches({"a": "400"})


def test_length_limit() -> None:
    padding = MAX_FILTER_LENGTH - len("a = ''")
    text = "a = '" + "x" * padding + "'"
    assert len(text) == MAX_FILTER_LENGTH
    assert compile_sql(text).matches({"a": "x" * padding})
    with pytest.raises(InvalidFilterError, match="4097 characters, more than the limit of 4096"):
        compile_sql(text + " ")


def test_in_list_limit() -> None:
    values = ",".join("1" for _ in range(MAX_IN_VALUES))
    assert compile_sql(f"a IN ({values})").matches({"a": "1"})
    with pytest.raises(InvalidFilterError, match=f"more than {MAX_IN_VALUES} values") as info:
        compile_sql(f"a IN ({values},2)")
    assert info.value.column == len(f"a IN ({values},") + 1


# -- property tests --------------------------------------------------------------------------

SQL_WORDS = [
    "a", "b", "x.y", "TAGS", "AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "TRUE",
    "FALSE", "=", "<>", "!=", "<", "<=", ">", ">=", "(", ")", ",", "1", "-2", "3.5", "'s'",
    "''", "'", "\"", "-", ".", "*", "||",
]  # fmt: skip


@settings(max_examples=300)
@given(st.text(alphabet=string.printable, max_size=80))
def test_random_text_compiles_or_raises_invalid_filter(text: str) -> None:
    try:
        f = compile_sql(text)
    except InvalidFilterError as exc:
        assert exc.column is None or 1 <= exc.column <= len(text) + 1
        assert str(exc)
        return
    assert isinstance(f.matches({"a": "1"}), bool)


@settings(max_examples=500)
@given(st.lists(st.sampled_from(SQL_WORDS), max_size=14), st.sampled_from([" ", "", "\t"]))
def test_random_tokens_compile_or_raise_invalid_filter(words: list[str], sep: str) -> None:
    text = sep.join(words)
    try:
        f = compile_sql(text)
    except InvalidFilterError as exc:
        assert exc.column is None or 1 <= exc.column <= len(text) + 1
        return
    for props in ({}, {"a": "1", "b": "x", "x.y": "3.5", "TAGS": "s"}):
        assert isinstance(f.matches(props), bool)


# Generated valid expressions, checked against a reference evaluator written independently:
# Kleene logic as min/max over F < U < T, IN as an OR of =, numbers from a fixed table.

#: Every property value the generator uses, with the number it is (None: not a number).
NUMBER_OF: dict[str, int | float | None] = {
    "1": 1, "-2": -2, "+7": 7, "3.5": 3.5, "0.0": 0.0, "1e2": 100.0, "007": 7,
    "abc": None, "": None, "true": None, "FALSE": None, " 1": None, "1_0": None, "it's": None,
}  # fmt: skip
NAMES = ["a", "b", "x.y", "TAGS"]
Value = bool | int | float | str
#: A reference tree: ("eq", name, negated, value), ("order", name, op, number),
#: ("in", name, negated, values), ("between", name, negated, low, high),
#: ("null", name, negated), ("group", node), ("not", node), ("and" | "or", nodes).
Node = tuple[Any, ...]
F, U, T = 0, 1, 2  # Kleene order


def _num_literal() -> st.SearchStrategy[tuple[str, Value]]:
    ints = st.integers(-3, 8).map(lambda i: (str(i), i))
    decimals = st.sampled_from(["3.5", "-2.0", "0.0", "100.00", "1.25"]).map(
        lambda t: (t, float(t))
    )
    return st.one_of(ints, decimals)


def _literal() -> st.SearchStrategy[tuple[str, Value]]:
    strings = st.sampled_from(sorted(NUMBER_OF)).map(
        lambda s: ("'" + s.replace("'", "''") + "'", s)
    )
    bools = st.sampled_from(["TRUE", "true", "False", "FALSE"]).map(
        lambda t: (t, t.upper() == "TRUE")
    )
    return st.one_of(_num_literal(), strings, bools)


def _kw(word: str) -> st.SearchStrategy[str]:
    return st.sampled_from([word, word.lower(), word.capitalize()])


@st.composite
def _predicate(draw: st.DrawFn) -> tuple[str, Node]:
    name = draw(st.sampled_from(NAMES))
    kind = draw(st.sampled_from(["eq", "order", "in", "between", "null"]))
    ws = draw(st.sampled_from(["", " ", "  "]))
    if kind == "eq":
        op = draw(st.sampled_from(["=", "<>", "!="]))
        text, value = draw(_literal())
        return f"{name}{ws}{op}{ws}{text}", ("eq", name, op != "=", value)
    if kind == "order":
        op = draw(st.sampled_from(["<", "<=", ">", ">="]))
        text, value = draw(_num_literal())
        return f"{name}{ws}{op}{ws}{text}", ("order", name, op, value)
    negated = draw(st.booleans())
    not_ = draw(_kw("NOT")) + " " if negated else ""
    if kind == "in":
        items = draw(st.lists(_literal(), min_size=1, max_size=4))
        body = ("," + ws).join(t for t, _ in items)
        text = f"{name} {not_}{draw(_kw('IN'))}{ws}({body})"
        return text, ("in", name, negated, [v for _, v in items])
    if kind == "between":
        (lo_text, lo), (hi_text, hi) = draw(_num_literal()), draw(_num_literal())
        text = f"{name} {not_}{draw(_kw('BETWEEN'))} {lo_text} {draw(_kw('AND'))} {hi_text}"
        return text, ("between", name, negated, lo, hi)
    text = f"{name} {draw(_kw('IS'))} {not_}{draw(_kw('NULL'))}"
    return text, ("null", name, negated)


def _extend(children: st.SearchStrategy[tuple[str, Node]]) -> st.SearchStrategy[tuple[str, Node]]:
    def group(pair: tuple[str, Node]) -> tuple[str, Node]:
        return f"({pair[0]})", ("group", pair[1])

    def negate(pair: tuple[str, Node]) -> tuple[str, Node]:
        return f"NOT ({pair[0]})", ("not", pair[1])

    def join(word: str) -> Callable[[list[tuple[str, Node]]], tuple[str, Node]]:
        def build(pairs: list[tuple[str, Node]]) -> tuple[str, Node]:
            # Each operand in parentheses: the reference tree is then exactly the text's.
            text = f" {word} ".join(f"({t})" for t, _ in pairs)
            return text, (word.lower(), [n for _, n in pairs])

        return build

    return st.one_of(
        children.map(group),
        children.map(negate),
        st.lists(children, min_size=2, max_size=4).map(join("AND")),
        st.lists(children, min_size=2, max_size=4).map(join("OR")),
    )


EXPRESSIONS = st.recursive(_predicate(), _extend, max_leaves=10)
PROPERTIES = st.dictionaries(st.sampled_from(NAMES), st.sampled_from(sorted(NUMBER_OF)))


def _equal(text: str, value: Value) -> bool:
    if isinstance(value, bool):
        return text.lower() == ("true" if value else "false")
    if isinstance(value, str):
        return text == value
    number = NUMBER_OF[text]
    return number is not None and number == value


def _reference(node: Node, props: Mapping[str, str]) -> int:
    kind = node[0]
    if kind == "group":
        return _reference(node[1], props)
    if kind == "not":
        return 2 - _reference(node[1], props)
    if kind == "and":
        return min(_reference(child, props) for child in node[1])
    if kind == "or":
        return max(_reference(child, props) for child in node[1])
    name = node[1]
    assert isinstance(name, str)
    if kind == "null":
        return T if (name not in props) != node[2] else F
    text = props.get(name)
    if text is None:
        return U
    if kind == "eq":
        result = _equal(text, node[3])
        return T if result != node[2] else F
    number = NUMBER_OF[text]
    if kind == "order":
        compare: Callable[[Any, Any], bool] = {
            "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        }[node[2]]  # fmt: skip
        return T if number is not None and compare(number, node[3]) else F
    if kind == "in":
        found = any(_equal(text, v) for v in node[3])
        return T if found != node[2] else F
    assert kind == "between"
    inside = number is not None and node[3] <= number <= node[4]
    return T if inside != node[2] else F


def _depth(node: Node) -> int:
    if node[0] == "group":  # (x)
        return 1 + _depth(node[1])
    if node[0] == "not":  # NOT (x)
        return 2 + _depth(node[1])
    if node[0] in ("and", "or"):  # (x) AND (y) ...
        return 1 + max(_depth(child) for child in node[1])
    return 0


@settings(max_examples=400)
@given(EXPRESSIONS, st.lists(PROPERTIES, min_size=1, max_size=5))
def test_generated_expressions_match_the_reference(
    pair: tuple[str, Node], messages: list[dict[str, str]]
) -> None:
    text, tree = pair
    if _depth(tree) > MAX_FILTER_DEPTH:  # parenthesised AND/OR operands each add a level
        with pytest.raises(InvalidFilterError):
            compile_sql(text)
        return
    f = compile_sql(text)
    for props in messages:
        assert f.matches(props) is (_reference(tree, props) == T), (text, props)
