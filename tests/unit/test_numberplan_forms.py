"""Property tests: every number of the shipped plan, in every form a caller or a carrier
may dial or deliver it, routes to the same entry; no emergency code lands on 96345.

Hypothesis draws the forms: with or without the county's area code (or another city's,
for short codes), ``+86`` / ``0086`` / ``86``, separators between any digits, full-width
digits from a Chinese input method, and SIP / tel URIs with display names, parameters
and percent-encoding, as carriers put them in the Request-URI.
"""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callrouter.numberplan import AREA_CODE, LINES, PlanEntry, load_plan, normalise

SHIPPED = Path(__file__).resolve().parents[2] / "queues" / "numberplan.csv"
PLAN = load_plan(SHIPPED)
ENTRIES = list(PLAN.entries)
EMERGENCY = [e for e in ENTRIES if e.line == "110"]
COUNTY_AREA = AREA_CODE[1:]  # 578
# other cities' area codes, two and three digits (Beijing, Shanghai, Hangzhou, Lishui's neighbours)
OTHER_AREAS = ("10", "21", "571", "579", "570")

SEPARATORS = st.sampled_from(["", "", "", " ", "-", ".", "(", ")", "\t", "/", "*", "#", "\u3000"])


def national_forms(entry: PlanEntry) -> list[str]:
    """The digit strings (with +) that mean this entry."""
    number = entry.number
    if number.startswith(AREA_CODE):  # a county fixed-line number
        local = number[len(AREA_CODE):]
        return [number, local, f"+86{COUNTY_AREA}{local}", f"+860{COUNTY_AREA}{local}",
                f"0086{COUNTY_AREA}{local}", f"00860{COUNTY_AREA}{local}", f"86{COUNTY_AREA}{local}",
                f"860{COUNTY_AREA}{local}"]
    forms = [number, f"0{COUNTY_AREA}{number}", f"+86{number}", f"0086{number}",
             f"+86{COUNTY_AREA}{number}", f"+860{COUNTY_AREA}{number}", f"0086{COUNTY_AREA}{number}"]
    # (+86 10 110 is left out: after +86, "10110" reads as a carrier's 10xxx service code)
    forms += [f"0{area}{number}" for area in OTHER_AREAS]
    forms += [f"+86{area}{number}" for area in OTHER_AREAS if area != "10"]
    return forms


@st.composite
def dialable(draw: st.DrawFn, entry: PlanEntry) -> str:
    """One dialable or delivered form of ``entry``."""
    digits = draw(st.sampled_from(national_forms(entry)))
    out = []
    for char in digits:
        out.append(draw(SEPARATORS) if char != "+" else "")
        out.append(char)
    text = "".join(out)
    if draw(st.booleans()):  # full-width digits and plus from a Chinese input method
        text = text.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789+"})
    wrap = draw(st.sampled_from(["bare", "sip", "sips", "tel", "named", "encoded"]))
    host = draw(st.sampled_from(["10.0.0.5", "trunk.example", "[2001:db8::1]:5060", "pbx"]))
    params = draw(st.sampled_from(["", ";user=phone", ";transport=udp", "?X-Foo=1"]))
    if wrap == "sip":
        return f"sip:{text}@{host}{params}"
    if wrap == "sips":
        return f"SIPS:{text}@{host}{params}"
    if wrap == "tel":
        return f"tel:{text};phone-context=+86"
    if wrap == "named":
        return f'"{draw(st.text(max_size=12).filter(lambda s: "<" not in s))}" <sip:{text}@{host}{params}>'
    if wrap == "encoded":
        quoted = "".join(f"%{ord(c):02X}" if c in "+ ()#" else c for c in text)
        return f"sip:{quoted}@{host}{params}"
    return f"  {text} "


ANY_ENTRY = st.sampled_from(ENTRIES)
FORM_OF_ANY = ANY_ENTRY.flatmap(lambda e: st.tuples(st.just(e), dialable(e)))
FORM_OF_EMERGENCY = st.sampled_from(EMERGENCY).flatmap(lambda e: st.tuples(st.just(e), dialable(e)))


@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
@given(FORM_OF_ANY)
def test_every_form_of_a_plan_number_routes_to_its_entry(case: tuple[PlanEntry, str]) -> None:
    entry, dialled = case
    route = PLAN.route(dialled)
    assert (route.number, route.line, route.category, route.listed) == (
        entry.number, entry.line, entry.category, True), dialled


@settings(max_examples=1000)
@given(FORM_OF_EMERGENCY)
def test_no_emergency_code_ever_lands_on_96345(case: tuple[PlanEntry, str]) -> None:
    entry, dialled = case
    route = PLAN.route(dialled)
    assert route.line == "110", f"{dialled!r} ({entry.number}, {entry.category}) went to {route.line}"
    assert route.priority == entry.priority


def test_the_county_area_code_before_every_short_code() -> None:
    # the cases the issue names, spelled out beside the generated ones
    for short in ("110", "119", "120", "122"):
        for form in (f"0578{short}", f"0578-{short}", f"(0578){short}", f"+86 578 {short}", f"0086578{short}"):
            route = PLAN.route(form)
            assert (route.number, route.line) == (short, "110"), form
    assert PLAN.route("057812345").number == "12345"
    assert PLAN.route("0578-96345").line == "96345"


def test_real_fixed_line_numbers_are_not_taken_for_short_codes() -> None:
    # 7 or 8 digits after an area code never start with 1 or 9, and the rule needs 6-10
    # digits in all: these stay what they are
    assert normalise("05786119119") == "05786119119"
    assert normalise("01012345678") == "01012345678"
    assert normalise("02112345678") == "02112345678"
    assert normalise("0578123456") == "123456"  # 0578 + a six-digit 1xxxxx code
    assert normalise("057861191") == "057861191"  # a short local number stays unknown


@settings(max_examples=3000)
@given(st.text(max_size=40))
def test_any_text_routes_somewhere_and_normalising_is_idempotent(text: str) -> None:
    number = normalise(text)
    assert normalise(number) == number
    assert number == "" or number.isdigit()
    route = PLAN.route(text)
    assert route.line in LINES
