"""Subscription filters: tag expressions and an SQL92 subset over message properties (SPEC M18).

Both sides import this module. A client compiles the expression when it subscribes, so a
bad one fails there with the column and what was expected (:class:`InvalidFilterError`);
a broker compiles it once per subscription and evaluates it for every message it reads.
docs/PROTOCOL.md section 12 is the contract; this module is the reference implementation.

Tag expressions (``"TagA || TagB"``, ``"*"``) are matched on the ConsumeQueue tag hash
(:func:`tag_hash`, the CRC32 of the UTF-8 tag), so the broker skips unwanted messages
without reading them. Two tags can share a CRC32: :meth:`TagFilter.matches_tags` is the
exact check on a record's tag.

SQL expressions (``"a > 5 AND region IN ('eu', 'us') OR TAGS = 'A'"``) are compiled by a
recursive-descent parser into a tree of closures (no ``eval``), evaluated with SQL's
three-valued logic: a comparison with a missing property is UNKNOWN, and a message matches
only when the whole expression is TRUE. Properties are strings; a comparison with a number
parses the property as a number, and is FALSE when it does not parse.

The limits (:data:`MAX_FILTER_LENGTH`, :data:`MAX_FILTER_DEPTH`, :data:`MAX_IN_VALUES`)
bound the work and the stack depth of both the parser and an evaluation: AND and OR chains
are flattened into one node, so only parentheses and NOT nest.
"""

from __future__ import annotations

import operator
import re
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, NamedTuple, NoReturn

from fabric.errors import InvalidFilterError

__all__ = [
    "MAX_FILTER_DEPTH",
    "MAX_FILTER_LENGTH",
    "MAX_IN_VALUES",
    "TAGS_PROPERTY",
    "SqlFilter",
    "TagFilter",
    "compile_sql",
    "compile_tags",
    "parse_tags",
    "tag_hash",
]

#: The longest filter expression, tags or SQL, in characters.
MAX_FILTER_LENGTH: Final = 4096
#: The deepest nesting of an SQL expression: each ``(`` and each NOT opens a level.
MAX_FILTER_DEPTH: Final = 64
#: The most values in one IN list.
MAX_IN_VALUES: Final = 1024
#: The identifier an SQL expression uses for the message's tag. The evaluator passes it in
#: the properties (absent when the message has no tag).
TAGS_PROPERTY: Final = "TAGS"

#: What the tag and SQL syntax call whitespace (str.strip() would take all of Unicode's).
_WHITESPACE: Final = " \t\r\n\f\v"
#: The longest token quoted in an error message.
_QUOTE_LIMIT: Final = 32


def _check_length(expression: str) -> None:
    if len(expression) > MAX_FILTER_LENGTH:
        raise InvalidFilterError(
            f"the filter expression has {len(expression)} characters, "
            f"more than the limit of {MAX_FILTER_LENGTH}",
            expression=expression,
        )


def _clip(text: str) -> str:
    return text if len(text) <= _QUOTE_LIMIT else text[: _QUOTE_LIMIT - 3] + "..."


# -- tags ------------------------------------------------------------------------------------


def tag_hash(tags: str) -> int:
    """The ConsumeQueue tag code: CRC32 of the UTF-8 tag string, 0 for no tag.

    The same function as ``broker.store.record.tag_hash`` (a unit test checks they agree);
    it is repeated here because the client layer may not import the broker.
    """
    return zlib.crc32(tags.encode()) if tags else 0


def _tag_fault(tag: str) -> tuple[int, str, str] | None:
    """Where in ``tag``, what and why it is not a valid tag; None when it is one."""
    if not tag:
        return 0, "empty tag", "expected a tag between '||' separators"
    if "*" in tag:
        return tag.index("*"), "'*' in a tag", "'*' alone selects every message"
    if "|" in tag:
        return tag.index("|"), "single '|'", "tags are separated by '||'"
    if tag != tag.strip(_WHITESPACE):
        return 0, "whitespace around a tag", "tags are trimmed"
    return None


def parse_tags(expression: str | None) -> frozenset[str] | None:
    """The tags a tag expression selects; None selects every message.

    Args:
        expression: ``None``, ``""`` or ``"*"`` (whitespace around it ignored) for every
            message, else tags separated by ``||``, each trimmed of surrounding whitespace.

    Raises:
        InvalidFilterError: an empty tag (``"A || || B"``, ``"A ||"``), a tag with ``*``
            or a single ``|``, or an expression over MAX_FILTER_LENGTH characters.
    """
    if expression is None:
        return None
    _check_length(expression)
    text = expression.strip(_WHITESPACE)
    if not text or text == "*":
        return None
    tags: set[str] = set()
    start = 0
    for part in expression.split("||"):
        tag = part.strip(_WHITESPACE)
        lead = len(part) - len(part.lstrip(_WHITESPACE))
        fault = _tag_fault(tag)
        if fault is not None:
            index, what, why = fault
            column = start + lead + index + 1
            raise InvalidFilterError(
                f"{what} at column {column}: {why}", expression=expression, column=column
            )
        tags.add(tag)
        start += len(part) + 2
    return frozenset(tags)


@dataclass(frozen=True)
class TagFilter:
    """A compiled tag expression: the tags it selects and their hashes.

    An empty ``tags`` selects every message (the expression ``*``). Build one with
    :func:`compile_tags`, or directly from tags (each is checked as in a tag expression).

    Attributes:
        tags: the tags selected; empty for every message.
        hashes: ``tag_hash`` of each tag, for the ConsumeQueue check.
        expression: the normalised expression: the tags sorted, joined by ``" || "``,
            or ``"*"``. Equal filters have equal expressions.
    """

    tags: frozenset[str] = frozenset()
    hashes: frozenset[int] = field(init=False, compare=False, repr=False)
    expression: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        tags = frozenset(self.tags)
        for tag in tags:
            fault = _tag_fault(tag)
            if fault is not None:
                raise InvalidFilterError(
                    f"invalid tag {_clip(tag)!r}: {fault[1]}: {fault[2]}", expression=tag
                )
        expression = " || ".join(sorted(tags)) or "*"
        _check_length(expression)
        # Frozen: the derived fields are set once, here.
        object.__setattr__(self, "tags", tags)
        object.__setattr__(self, "hashes", frozenset(tag_hash(tag) for tag in tags))
        object.__setattr__(self, "expression", expression)

    @property
    def matches_all(self) -> bool:
        """True for ``*``: every message, tagged or not, matches."""
        return not self.tags

    def matches_hash(self, h: int) -> bool:
        """Whether a ConsumeQueue entry with tag hash ``h`` may match (a CRC32 can collide)."""
        return not self.hashes or h in self.hashes

    def matches_tags(self, tags: str | None) -> bool:
        """Whether a message with this tag matches, exactly; no tag matches only ``*``."""
        return not self.tags or tags in self.tags


def compile_tags(expression: str | None) -> TagFilter:
    """The TagFilter of a tag expression (see :func:`parse_tags`).

    Raises:
        InvalidFilterError: the expression is not valid.
    """
    return TagFilter(parse_tags(expression) or frozenset())


# -- SQL: tokens -----------------------------------------------------------------------------

#: A literal's value: TRUE and FALSE are bools, numbers int or float, strings unquoted.
_Literal = bool | int | float | str
#: A compiled node: properties -> TRUE, FALSE or None (UNKNOWN).
_Eval = Callable[[Mapping[str, str]], bool | None]

_KEYWORDS: Final = frozenset({"AND", "OR", "NOT", "IN", "BETWEEN", "IS", "NULL", "TRUE", "FALSE"})

_TOKEN: Final = re.compile(
    r"""
      (?P<ws>[ \t\r\n\f\v]+)
    | (?P<number>-?[0-9]+(?:\.[0-9]+)?)
    | (?P<string>'[^']*(?:''[^']*)*'(?!'))  # not before a quote: 'it''s is unterminated
    | (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    | (?P<op><>|!=|<=|>=|[=<>])
    | (?P<punct>[(),])
    """,
    re.VERBOSE,
)


class _Token(NamedTuple):
    #: number, string, name, keyword, op, punct or end.
    kind: str
    #: The source text; upper-cased for a keyword.
    text: str
    #: 1-based.
    column: int


def _tokenize(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos, end = 0, len(expression)
    while pos < end:
        match = _TOKEN.match(expression, pos)
        if match is None:
            char = expression[pos]
            column = pos + 1
            if char == "'":
                message = f"unterminated string starting at column {column}"
            else:
                shown = f"'{char}'" if char.isprintable() else f"U+{ord(char):04X}"
                message = f"unexpected character {shown} at column {column}"
                if char == '"':
                    message += ": strings are in single quotes"
            raise InvalidFilterError(message, expression=expression, column=column)
        kind = match.lastgroup
        assert kind is not None
        text = match.group()
        if kind != "ws":
            if kind == "name" and text.upper() in _KEYWORDS:
                kind, text = "keyword", text.upper()
            tokens.append(_Token(kind, text, pos + 1))
        pos = match.end()
    tokens.append(_Token("end", "", end + 1))
    return tokens


# -- SQL: evaluation nodes -------------------------------------------------------------------
#
# Each node is a closure ``properties -> True | False | None`` (None is UNKNOWN). They return
# real bools, so the logic nodes can test with ``is``.

#: A property's text that is a number (section 12); a group matches only for a decimal.
_NUMBER_TEXT: Final = re.compile(
    r"[+-]?(?:[0-9]+(\.[0-9]*)?|(\.[0-9]+))([eE][+-]?[0-9]+)?"
).fullmatch


def _to_number(text: str) -> int | float | None:
    """A property's value as a number, or None when it is not one (section 12 grammar)."""
    if not (text.isascii() and text.isdigit()):  # plain digits, the common case, skip the regex
        match = _NUMBER_TEXT(text)
        if match is None:
            return None
        if match.lastindex is not None:  # a fraction or an exponent
            return float(text)
    try:
        return int(text)
    except ValueError:  # more digits than int() converts (sys.get_int_max_str_digits)
        return float(text)


_ORDERING: Final[dict[str, Callable[[float, float], bool]]] = {
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}


def _negate(node: _Eval) -> _Eval:
    def negated(props: Mapping[str, str]) -> bool | None:
        result = node(props)
        return None if result is None else not result

    return negated


def _all(nodes: list[_Eval]) -> _Eval:
    if len(nodes) == 2:
        first, second = nodes

        def both(props: Mapping[str, str]) -> bool | None:
            a = first(props)
            if a is False:
                return False
            b = second(props)
            if b is False:
                return False
            return None if a is None or b is None else True

        return both
    chain = tuple(nodes)

    def every(props: Mapping[str, str]) -> bool | None:
        unknown = False
        for node in chain:
            result = node(props)
            if result is False:
                return False
            if result is None:
                unknown = True
        return None if unknown else True

    return every


def _any(nodes: list[_Eval]) -> _Eval:
    if len(nodes) == 2:
        first, second = nodes

        def either(props: Mapping[str, str]) -> bool | None:
            a = first(props)
            if a is True:
                return True
            b = second(props)
            if b is True:
                return True
            return None if a is None or b is None else False

        return either
    chain = tuple(nodes)

    def some(props: Mapping[str, str]) -> bool | None:
        unknown = False
        for node in chain:
            result = node(props)
            if result is True:
                return True
            if result is None:
                unknown = True
        return None if unknown else False

    return some


def _equal(name: str, value: _Literal) -> _Eval:
    if isinstance(value, bool):
        word = "true" if value else "false"

        def equal_bool(props: Mapping[str, str]) -> bool | None:
            text = props.get(name)
            return None if text is None else text.lower() == word

        return equal_bool
    if isinstance(value, str):

        def equal_str(props: Mapping[str, str]) -> bool | None:
            text = props.get(name)
            return None if text is None else text == value

        return equal_str
    number = value

    def equal_number(props: Mapping[str, str]) -> bool | None:
        text = props.get(name)
        if text is None:
            return None
        found = _to_number(text)
        return found is not None and found == number

    return equal_number


def _compare(name: str, op: Callable[[float, float], bool], number: float) -> _Eval:
    def compare(props: Mapping[str, str]) -> bool | None:
        text = props.get(name)
        if text is None:
            return None
        found = _to_number(text)
        return found is not None and op(found, number)

    return compare


def _between(name: str, low: float, high: float) -> _Eval:
    def between(props: Mapping[str, str]) -> bool | None:
        text = props.get(name)
        if text is None:
            return None
        found = _to_number(text)
        return found is not None and low <= found <= high

    return between


def _member(name: str, values: list[_Literal]) -> _Eval:
    strings = frozenset(v for v in values if isinstance(v, str))
    words = frozenset(str(v).lower() for v in values if isinstance(v, bool))
    numbers = frozenset(v for v in values if not isinstance(v, (str, bool)))
    if not words and not numbers:

        def member_str(props: Mapping[str, str]) -> bool | None:
            text = props.get(name)
            return None if text is None else text in strings

        return member_str

    def member(props: Mapping[str, str]) -> bool | None:
        text = props.get(name)
        if text is None:
            return None
        if text in strings:
            return True
        if numbers:
            found = _to_number(text)
            if found is not None and found in numbers:
                return True
        return bool(words) and text.lower() in words

    return member


def _is_null(name: str, negated: bool) -> _Eval:
    if negated:
        return lambda props: name in props
    return lambda props: name not in props


# -- SQL: parser -----------------------------------------------------------------------------


class _Parser:
    """Recursive descent over the token list; one method per grammar rule of section 12."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.index = 0
        self.depth = 0
        self.names: set[str] = set()

    def fail(self, token: _Token, expected: str) -> NoReturn:
        if token.kind == "end":
            found = "end of expression"
        elif token.kind == "string":
            found = f"string {_clip(token.text)}"
        else:
            found = f"'{_clip(token.text)}'"
        raise InvalidFilterError(
            f"unexpected {found} at column {token.column}: {expected}",
            expression=self.expression,
            column=token.column,
        )

    def next(self) -> _Token:
        token = self.tokens[self.index]
        if token.kind != "end":
            self.index += 1
        return token

    def peek_keyword(self, word: str) -> bool:
        token = self.tokens[self.index]
        return token.kind == "keyword" and token.text == word

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_FILTER_DEPTH:
            raise InvalidFilterError(
                f"the expression nests deeper than {MAX_FILTER_DEPTH} levels"
                f" (parentheses and NOT) at column {token.column}",
                expression=self.expression,
                column=token.column,
            )

    def parse(self) -> _Eval:
        if len(self.tokens) == 1:
            raise InvalidFilterError("the SQL filter expression is empty", expression="")
        node = self.disjunction()
        token = self.next()
        if token.kind != "end":
            self.fail(token, "expected AND, OR or the end of the expression")
        return node

    def disjunction(self) -> _Eval:
        nodes = [self.conjunction()]
        while self.peek_keyword("OR"):
            self.next()
            nodes.append(self.conjunction())
        return nodes[0] if len(nodes) == 1 else _any(nodes)

    def conjunction(self) -> _Eval:
        nodes = [self.negation()]
        while self.peek_keyword("AND"):
            self.next()
            nodes.append(self.negation())
        return nodes[0] if len(nodes) == 1 else _all(nodes)

    def negation(self) -> _Eval:
        if not self.peek_keyword("NOT"):
            return self.primary()
        self.enter(self.next())
        node = _negate(self.negation())
        self.depth -= 1
        return node

    def primary(self) -> _Eval:
        token = self.next()
        if token.kind == "punct" and token.text == "(":
            self.enter(token)
            node = self.disjunction()
            close = self.next()
            if close.kind != "punct" or close.text != ")":
                self.fail(close, "expected AND, OR or ')'")
            self.depth -= 1
            return node
        if token.kind == "name":
            self.names.add(token.text)
            return self.predicate(token.text)
        self.fail(token, "expected a property name, NOT or '('")

    def predicate(self, name: str) -> _Eval:
        token = self.next()
        if token.kind == "op":
            if token.text in ("=", "<>", "!="):
                node = _equal(name, self.literal())
                return node if token.text == "=" else _negate(node)
            return _compare(name, _ORDERING[token.text], self.number())
        if token.kind == "keyword" and token.text == "IS":
            negated = self.peek_keyword("NOT")
            if negated:
                self.next()
            end = self.next()
            if end.kind != "keyword" or end.text != "NULL":
                self.fail(end, "expected NULL" if negated else "expected NULL or NOT NULL")
            return _is_null(name, negated)
        negated = token.kind == "keyword" and token.text == "NOT"
        if negated:
            token = self.next()
            if token.kind != "keyword" or token.text not in ("IN", "BETWEEN"):
                self.fail(token, "expected IN or BETWEEN after NOT")
        if token.kind == "keyword" and token.text == "IN":
            node = self.member(name)
        elif token.kind == "keyword" and token.text == "BETWEEN":
            low = self.number()
            word = self.next()
            if word.kind != "keyword" or word.text != "AND":
                self.fail(word, "expected AND between the bounds of BETWEEN")
            node = _between(name, low, self.number())
        else:
            self.fail(token, "expected a comparison operator, IN, BETWEEN, IS or NOT")
        return _negate(node) if negated else node

    def member(self, name: str) -> _Eval:
        token = self.next()
        if token.kind != "punct" or token.text != "(":
            self.fail(token, "expected '(' after IN")
        values = [self.literal()]
        while True:
            token = self.next()
            if token.kind == "punct" and token.text == ")":
                return _member(name, values)
            if token.kind != "punct" or token.text != ",":
                self.fail(token, "expected ',' or ')'")
            if len(values) == MAX_IN_VALUES:
                raise InvalidFilterError(
                    f"the IN list has more than {MAX_IN_VALUES} values"
                    f" (column {self.tokens[self.index].column})",
                    expression=self.expression,
                    column=self.tokens[self.index].column,
                )
            values.append(self.literal())

    def literal(self, expected: str = "expected a value") -> _Literal:
        token = self.next()
        if token.kind == "number":
            return float(token.text) if "." in token.text else int(token.text)
        if token.kind == "string":
            return token.text[1:-1].replace("''", "'")
        if token.kind == "keyword" and token.text in ("TRUE", "FALSE"):
            return token.text == "TRUE"
        if token.kind == "keyword" and token.text == "NULL":
            expected += " (test for a missing property with IS NULL)"
        self.fail(token, expected)

    def number(self) -> float:
        token = self.tokens[self.index]
        value = self.literal("expected a number")
        if isinstance(value, (str, bool)):
            self.fail(token, "expected a number")
        return value


class SqlFilter:
    """A compiled SQL filter expression (docs/PROTOCOL.md section 12).

    Args:
        expression: the expression; the SQL92 subset of section 12.

    Raises:
        InvalidFilterError: the expression does not parse, or breaks a limit.

    Attributes:
        expression: the expression as given.
        names: the property names it reads (``TAGS`` included when it tests the tag).
    """

    __slots__ = ("_root", "expression", "names")

    def __init__(self, expression: str) -> None:
        _check_length(expression)
        parser = _Parser(expression)
        self._root = parser.parse()
        self.expression = expression
        self.names = frozenset(parser.names)

    def matches(self, properties: Mapping[str, str]) -> bool:
        """Whether a message with these properties is selected: the expression is TRUE.

        Args:
            properties: the message's user properties, plus ``TAGS`` (TAGS_PROPERTY) mapped
                to its tag when it has one; a name absent from the mapping is NULL.
        """
        return self._root(properties) is True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SqlFilter):
            return NotImplemented
        return self.expression == other.expression

    def __hash__(self) -> int:
        return hash(self.expression)

    def __repr__(self) -> str:
        return f"SqlFilter({self.expression!r})"


def compile_sql(expression: str) -> SqlFilter:
    """Compile an SQL filter expression; the same as ``SqlFilter(expression)``.

    Raises:
        InvalidFilterError: the expression does not parse, or breaks a limit; the message
            names the column and what was expected.
    """
    return SqlFilter(expression)
