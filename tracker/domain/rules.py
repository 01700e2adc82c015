"""Campaign rules: conditions on what is known of a click, compiled once, tested per click.

A rule is a list of conditions `{"field", "op", "values"}`; it holds when every condition
holds. Conditions are compiled when the configuration loads (and when the API saves them,
which is how they are validated): text values are case-folded into frozensets, networks
parsed into address ranges, days and hours turned into numbers. Testing a condition is
then one attribute read and one set lookup.

A fact the click does not have (no country for a private address, no such click
parameter, uniqueness not decided) makes `in` false and `not_in` true: `not_in` means
"is not one of these", and a missing value is not one of them.
"""

import dataclasses
import ipaddress
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Generic, TypeVar

from tracker.domain.addresses import Address, AddressRanges, parse_ip
from tracker.domain.visitor import DEVICE_TYPES, Visitor

P = TypeVar("P")
V = TypeVar("V")

FIELDS = (
    "country",
    "region",
    "city",
    "device",
    "os",
    "browser",
    "language",
    "ip",
    "asn",
    "is_bot",
    "is_unique",
    "hour",
    "weekday",
)
# `param:sub1`, `param:zone`: any parameter of the click URL, by its exact name.
PARAM_PREFIX = "param:"
OPS = ("in", "not_in")
MAX_VALUES = 1000
MAX_TEXT = 200
MAX_PARAM_VALUE = 1000
_PARAM_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_LANGUAGE = re.compile(r"[a-z]{2,3}")
_ASN = re.compile(r"(?:as)?([0-9]{1,10})")
_MAX_ASN = 2**32 - 1

# ISO 3166-1 alpha-2, plus XK (Kosovo) and MaxMind's EU and AP, which GeoIP data uses.
COUNTRY_CODES = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ
    BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM
    DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS
    GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN
    KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ
    MR MS MT MU MV MW MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM
    PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV
    SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG VI
    VN VU WF WS YE YT ZA ZM ZW XK EU AP
    """.split()
)
# ISO weekday numbers, Monday = 1; three-letter and full English names are accepted too.
WEEKDAYS = {
    name: number
    for number, full in enumerate(
        ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"), start=1
    )
    for name in (full, full[:3])
}
_BOOLEANS = {"true": True, "false": False}


class RuleError(ValueError):
    """A condition or rule that cannot be compiled; `place` says where, relative to what
    was compiled (`op`, `values.2`, `conditions.0.field`)."""

    def __init__(self, place: str, message: str) -> None:
        super().__init__(f"{place}: {message}" if place else message)
        self.place = place
        self.message = message

    def within(self, prefix: str) -> "RuleError":
        """The same error, placed inside `prefix` (`rules.2`)."""
        return RuleError(f"{prefix}.{self.place}" if self.place else prefix, self.message)


class ClickFacts:
    """One click as the rules read it. The local time and the parsed address are worked
    out on first use, so a campaign whose rules never ask for them never pays for them."""

    __slots__ = ("_local", "_now_ms", "_timezone", "is_unique", "params", "visitor")

    def __init__(
        self,
        visitor: Visitor,
        params: Mapping[str, str],
        is_unique: bool | None,
        now_ms: int,
        timezone: tzinfo,
    ) -> None:
        self.visitor = visitor
        self.params = params
        self.is_unique = is_unique
        self._now_ms = now_ms
        self._timezone = timezone
        self._local: tuple[int, int] | None = None

    @property
    def local_time(self) -> tuple[int, int]:
        """(hour 0-23, ISO weekday 1-7) in the campaign's time zone."""
        if self._local is None:
            moment = datetime.fromtimestamp(self._now_ms / 1000, self._timezone)
            self._local = (moment.hour, moment.isoweekday())
        return self._local

    @property
    def address(self) -> Address | None:
        """(IP version, address as a number), or None without a readable address.
        An IPv4-mapped IPv6 address counts as the IPv4 address it carries. The visitor
        facts parsed it already; a Visitor built without them has it parsed here."""
        return self.visitor.address or parse_ip(self.visitor.ip)


# Whether the click's fact is one of the condition's values; False when the fact is missing.
Test = Callable[[ClickFacts], bool]


@dataclass(frozen=True, slots=True)
class Condition:
    field: str
    negate: bool  # op `not_in`
    test: Test

    @property
    def op(self) -> str:
        return "not_in" if self.negate else "in"

    def holds(self, facts: ClickFacts) -> bool:
        return self.test(facts) != self.negate


@dataclass(frozen=True, slots=True)
class Rule(Generic[P]):
    """Conditions that, when all hold, send the click down `path`."""

    index: int  # position in the campaign's stored list, which a stored click refers to
    name: str
    conditions: tuple[Condition, ...]
    path: P

    # The conditions' tests with `not_in` folded in: each holds when its condition does.
    _tests: tuple[Test, ...] = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tests", tuple(map(_holding, self.conditions)))

    def matches(self, facts: ClickFacts) -> bool:
        for test in self._tests:
            if not test(facts):
                return False
        return True

    @property
    def uses_uniqueness(self) -> bool:
        return any(c.field == "is_unique" for c in self.conditions)


def _holding(condition: Condition) -> Test:
    test = condition.test
    if condition.negate:
        return lambda facts: not test(facts)
    return test


def field_problem(field: object) -> str | None:
    """Why `field` is not a condition field, or None."""
    if not isinstance(field, str):
        return "must be a string"
    if field.startswith(PARAM_PREFIX):
        if _PARAM_NAME.fullmatch(field[len(PARAM_PREFIX) :]):
            return None
        return "a parameter name is 1 to 64 letters, digits, '_', '.' or '-' (param:sub1)"
    if field not in FIELDS:
        return f"unknown field {field!r}; use one of {', '.join(FIELDS)} or param:NAME"
    return None


def compile_condition(raw: object) -> Condition:
    """A condition from its stored or submitted form `{"field", "op", "values"}`;
    `RuleError` (placed at `field`, `op`, `values` or `values.N`) when it is not valid."""
    if not isinstance(raw, Mapping):
        raise RuleError("", "must be an object with field, op and values")
    unknown = set(raw) - {"field", "op", "values"}
    if unknown:
        raise RuleError(sorted(map(str, unknown))[0], "unknown key")
    field = raw.get("field")
    problem = field_problem(field)
    if problem is not None:
        raise RuleError("field", problem)
    assert isinstance(field, str)
    op = raw.get("op")
    if op not in OPS:
        raise RuleError("op", "must be 'in' or 'not_in'")
    values = raw.get("values")
    if not isinstance(values, list) or not values:
        raise RuleError("values", "must be a non-empty list")
    if len(values) > MAX_VALUES:
        raise RuleError("values", f"at most {MAX_VALUES} values")
    return Condition(field=field, negate=op == "not_in", test=_compile_test(field, values))


def compile_rule(index: int, raw: Mapping[str, object], path: P) -> Rule[P]:
    """A rule from its stored form; only `name` and `conditions` are read here (the
    caller builds `path` from the offers and landers). `RuleError` placed at
    `conditions.N.<where>` for a bad condition."""
    name = raw.get("name", "")
    conditions = raw.get("conditions")
    if not isinstance(conditions, list) or not conditions:
        raise RuleError("conditions", "must be a non-empty list")
    return Rule(
        index=index,
        name=name if isinstance(name, str) else "",
        conditions=tuple(compile_conditions(conditions)),
        path=path,
    )


def compile_conditions(raw: Sequence[object]) -> list[Condition]:
    """Every condition of a rule, each placed at `conditions.N` when invalid."""
    compiled = []
    for i, item in enumerate(raw):
        try:
            compiled.append(compile_condition(item))
        except RuleError as exc:
            raise exc.within(f"conditions.{i}") from None
    return compiled


def _compile_test(field: str, values: list[object]) -> Test:
    if field.startswith(PARAM_PREFIX):
        return _param_test(field[len(PARAM_PREFIX) :], values)
    if field == "ip":
        return _ip_test(values)
    if field == "asn":
        return _asn_test(values)
    if field in ("is_bot", "is_unique"):
        wanted = frozenset(_each(values, _boolean))
        if field == "is_bot":
            return lambda f: f.visitor.is_bot in wanted
        return lambda f: f.is_unique is not None and f.is_unique in wanted
    if field == "hour":
        hours = frozenset(_each(values, _hour))
        return lambda f: f.local_time[0] in hours
    if field == "weekday":
        days = frozenset(_each(values, _weekday))
        return lambda f: f.local_time[1] in days
    return _text_test(field, values)


def _text_test(field: str, values: list[object]) -> Test:
    check = {
        "country": _country,
        "device": _device,
        "language": _language,
    }.get(field, _text)
    texts = frozenset(_each(values, check))
    if field == "country":
        return lambda f: (c := f.visitor.geo.country) is not None and c.casefold() in texts
    if field == "region":
        return lambda f: (r := f.visitor.geo.region) is not None and r.casefold() in texts
    if field == "city":
        return lambda f: (c := f.visitor.geo.city) is not None and c.casefold() in texts
    if field == "device":
        return lambda f: f.visitor.agent.device.casefold() in texts
    if field == "os":
        return lambda f: (o := f.visitor.agent.os) is not None and o.casefold() in texts
    if field == "browser":
        return lambda f: (b := f.visitor.agent.browser) is not None and b.casefold() in texts
    assert field == "language"
    return lambda f: (lang := f.visitor.language) is not None and lang.casefold() in texts


def _param_test(name: str, values: list[object]) -> Test:
    texts = frozenset(_each(values, _param_value))
    return lambda f: (v := f.params.get(name)) is not None and v.casefold() in texts


def _ip_test(values: list[object]) -> Test:
    ranges = AddressRanges(_each(values, _network))
    return lambda f: f.address in ranges


def _asn_test(values: list[object]) -> Test:
    numbers: set[int] = set()
    names: set[str] = set()
    for value in _each(values, _asn):
        if isinstance(value, int):
            numbers.add(value)
        else:
            names.add(value)
    wanted_numbers, wanted_names = frozenset(numbers), frozenset(names)

    def test(facts: ClickFacts) -> bool:
        geo = facts.visitor.geo
        if geo.asn is not None and geo.asn in wanted_numbers:
            return True
        return geo.isp is not None and geo.isp.casefold() in wanted_names

    return test


def _each(values: list[object], check: Callable[[object], V]) -> Iterable[V]:
    """Every value through `check`, a `ValueError` becoming a `RuleError` at `values.N`."""
    for i, value in enumerate(values):
        try:
            yield check(value)
        except ValueError as exc:
            raise RuleError(f"values.{i}", str(exc)) from None


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("must be a non-empty string")
    if len(value) > MAX_TEXT:
        raise ValueError(f"must be at most {MAX_TEXT} characters")
    return value.strip().casefold()


def _param_value(value: object) -> str:
    # Numbers are taken as their text, since click parameters are text (`sub1 in [42]`).
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > MAX_PARAM_VALUE:
        raise ValueError(f"must be at most {MAX_PARAM_VALUE} characters")
    return value.casefold()


def _country(value: object) -> str:
    if not isinstance(value, str) or value.strip().upper() not in COUNTRY_CODES:
        raise ValueError(f"{value!r} is not an ISO 3166 alpha-2 country code (like 'DE')")
    return value.strip().casefold()


def _device(value: object) -> str:
    if not isinstance(value, str) or value.strip().casefold() not in DEVICE_TYPES:
        raise ValueError(f"{value!r} is not a device type; use one of {', '.join(DEVICE_TYPES)}")
    return value.strip().casefold()


def _language(value: object) -> str:
    if not isinstance(value, str) or not _LANGUAGE.fullmatch(value.strip().casefold()):
        raise ValueError(f"{value!r} is not a primary language code (two or three letters: 'de')")
    return value.strip().casefold()


def _network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError("must be an IP address or CIDR block as a string")
    try:
        return ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address or CIDR block") from None


def _asn(value: object) -> int | str:
    """An AS number (`15169`, `"15169"`, `"AS15169"`) or an organisation name."""
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and (match := _ASN.fullmatch(value.strip().casefold())):
        number = int(match.group(1))
    else:
        return _text(value)
    if not 0 <= number <= _MAX_ASN:
        raise ValueError(f"AS number {number} is out of range")
    return number


def _boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().casefold() in _BOOLEANS:
        return _BOOLEANS[value.strip().casefold()]
    raise ValueError(f"{value!r} is not true or false")


def _small_number(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip()) if len(value.strip()) <= 3 else -1
    return None


def _hour(value: object) -> int:
    number = _small_number(value)
    if number is None or not 0 <= number <= 23:
        raise ValueError(f"{value!r} is not an hour from 0 to 23")
    return number


def _weekday(value: object) -> int:
    number = _small_number(value)
    if number is None and isinstance(value, str):
        number = WEEKDAYS.get(value.strip().casefold())
    if number is None or not 1 <= number <= 7:
        raise ValueError(f"{value!r} is not a weekday (mon to sun, or 1 to 7 with Monday = 1)")
    return number
