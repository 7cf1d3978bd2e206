"""Unit tests of callrouter.numberplan: normalisation, routing, the shipped plan, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from callrouter.numberplan import (
    HEADER_LINE,
    LINES,
    UNLISTED,
    NumberPlan,
    PlanEntry,
    PlanError,
    Route,
    check_plan,
    load_plan,
    normalise,
)

SHIPPED = Path(__file__).resolve().parents[2] / "queues" / "numberplan.csv"

# A county example number (made up) that the shipped plan lists: the fire brigade's duty room.
FIRE_DUTY = "05786119119"

LINE_ROWS = (
    "110,110,police,县公安局指挥中心,1,报警求助,no\n"
    "96345,96345,public_service,县96345社会公共服务中心,5,非紧急求助,no\n"
)


@pytest.fixture(scope="module")
def plan() -> NumberPlan:
    return load_plan(SHIPPED)


def write(tmp_path: Path, text: str, name: str = "plan.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    assert check_plan(path) == caught.value.problems
    assert str(caught.value) == "\n".join(caught.value.problems)
    return caught.value.problems


# --------------------------------------------------------------------------- normalise


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # the county number in every form the trunk or a person may write it
        ("05786123456", "05786123456"),
        ("6123456", "05786123456"),
        ("+86 578 6123456", "05786123456"),
        ("+865786123456", "05786123456"),
        ("0086-578-6123456", "05786123456"),
        ("00865786123456", "05786123456"),
        ("865786123456", "05786123456"),
        ("+86 0578 6123456", "05786123456"),
        ("8605786123456", "05786123456"),
        ("(0578) 612-3456", "05786123456"),
        ("0578.612.3456", "05786123456"),
        ("612 34 56", "05786123456"),
        ("  0578-6123456\t", "05786123456"),
        # SIP and tel URIs
        ("sip:6123456@10.0.0.5", "05786123456"),
        ("sip:+865786123456@trunk.example;user=phone", "05786123456"),
        ("sips:110@pbx:5061", "110"),
        ("SIP:119@pbx", "119"),
        ("tel:+86-578-6123456;phone-context=+86", "05786123456"),
        ('"Caller" <sip:12345@pbx;transport=udp>', "12345"),
        ("sip:%2B8696345@pbx", "96345"),
        ("sip:110;isub=1@pbx", "110"),
        # short codes and service numbers are never prefixed
        ("110", "110"),
        ("119", "119"),
        ("12345", "12345"),
        ("96345", "96345"),
        ("95598", "95598"),
        ("+86 110", "110"),
        ("+86 96345", "96345"),
        ("008612345", "12345"),
        # mobiles, other lengths, other area codes and other countries
        ("+86 139 1234 5678", "13912345678"),
        ("8613912345678", "13912345678"),
        ("13912345678", "13912345678"),
        ("+86 10 12345678", "01012345678"),
        ("+86 400 123 4567", "4001234567"),
        ("61234567", "61234567"),
        ("612345", "612345"),
        ("1234567", "1234567"),
        ("9123456", "9123456"),
        ("0123456", "0123456"),
        ("+1 212 555 0100", "0012125550100"),
        ("0044 20 7946 0000", "00442079460000"),
        # full-width characters from Chinese input methods
        ("（０５７８）６１２３４５６", "05786123456"),
        ("＋８６ ５７８ ６１２３４５６", "05786123456"),
        # stray characters
        ("*110#", "110"),
        ("1-2-3-4-5", "12345"),
        # nothing to dial
        ("", ""),
        ("   ", ""),
        ("s", ""),
        ("sip:anonymous@pbx", ""),
        ("+", ""),
        ("-()", ""),
    ],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


def test_normalise_is_idempotent(plan: NumberPlan) -> None:
    for entry in plan.entries:
        assert normalise(entry.number) == entry.number


# --------------------------------------------------------------------------- routing


def test_route_fire_goes_to_110_with_priority_1(plan: NumberPlan) -> None:
    route = plan.route("119")
    assert route == Route(
        dialled="119",
        number="119",
        line="110",
        category="fire",
        department="县消防救援大队",
        priority=1,
        description="火警",
        listed=True,
    )


@pytest.mark.parametrize(
    ("dialled", "line", "category", "priority"),
    [
        ("110", "110", "police", 1),
        ("120", "110", "ambulance", 1),
        ("122", "110", "traffic_accident", 2),
        ("12119", "110", "forest_fire", 1),
        ("96345", "96345", "public_service", 5),
        ("12345", "96345", "government_service", 5),
        ("12315", "96345", "consumer_complaint", 5),
        ("12333", "96345", "labour", 5),
        ("95598", "96345", "power_repair", 4),
        ("12350", "96345", "work_safety_report", 4),
        ("sip:12345@pbx;user=phone", "96345", "government_service", 5),
    ],
)
def test_route_known_numbers(
    plan: NumberPlan, dialled: str, line: str, category: str, priority: int
) -> None:
    route = plan.route(dialled)
    assert (route.line, route.category, route.priority, route.listed) == (
        line,
        category,
        priority,
        True,
    )
    assert route.dialled == dialled


@pytest.mark.parametrize(
    "dialled",
    [
        FIRE_DUTY,
        "6119119",
        "+86 578 6119119",
        "0086 578 611 9119",
        "sip:+865786119119@trunk",
    ],
)
def test_route_county_example_number_in_any_form(
    plan: NumberPlan, dialled: str
) -> None:
    route = plan.route(dialled)
    assert route.number == FIRE_DUTY
    assert (route.line, route.category, route.priority, route.listed) == (
        "110",
        "fire",
        1,
        True,
    )
    assert route.dialled == dialled
    entry = plan.lookup(dialled)
    assert entry is not None and entry.example


@pytest.mark.parametrize(
    ("dialled", "number"),
    [
        ("05786999999", "05786999999"),
        ("6999999", "05786999999"),
        ("12306", "12306"),
        ("13912345678", "13912345678"),
        ("", ""),
        ("s", ""),
        ("sip:anonymous@pbx", ""),
    ],
)
def test_unknown_numbers_reach_96345(
    plan: NumberPlan, dialled: str, number: str
) -> None:
    route = plan.route(dialled)
    assert route.dialled == dialled
    assert route.number == number
    assert route.line == "96345"
    assert route.category == UNLISTED
    assert route.priority == 5
    assert route.department
    assert route.description
    assert route.listed is False
    assert plan.lookup(dialled) is None


def test_route_is_frozen(plan: NumberPlan) -> None:
    route = plan.route("119")
    with pytest.raises(AttributeError):
        route.line = "96345"  # type: ignore[misc]


# --------------------------------------------------------------------------- shipped plan


def test_shipped_plan_loads(plan: NumberPlan) -> None:
    assert check_plan(SHIPPED) == []
    assert len(plan) == len(plan.entries) >= 100
    assert plan.source == SHIPPED
    numbers = {entry.number for entry in plan.entries}
    assert set(LINES) <= numbers
    assert plan.route("110").line == "110"
    assert plan.route("96345").line == "96345"


def test_shipped_plan_content_is_sane(plan: NumberPlan) -> None:
    by_number = {entry.number: entry for entry in plan.entries}
    for code in ("110", "119", "120", "122", "12119", "12122", "12395"):
        assert by_number[code].line == "110", code
        assert not by_number[code].example
    for code in (
        "12345",
        "12315",
        "12333",
        "12369",
        "12320",
        "95598",
        "12366",
        "12121",
    ):
        assert by_number[code].line == "96345", code
        assert not by_number[code].example
    for entry in plan.entries:
        assert entry.category != UNLISTED
        assert entry.line in LINES
        assert 1 <= entry.priority <= 9
        if entry.example:
            # made-up county numbers: area code 0578, 7-digit local number starting with 6
            assert entry.number.startswith("05786") and len(entry.number) == 11, entry
        if entry.category in ("fire", "ambulance"):
            assert entry.line == "110" and entry.priority == 1, entry
    # the 19 towns and streets each have a line
    assert sum(entry.category == "township_service" for entry in plan.entries) == 19


def test_to_json_list(plan: NumberPlan) -> None:
    items = plan.to_json_list()
    assert len(items) == len(plan.entries)
    fire = next(item for item in items if item["number"] == "119")
    assert fire == {
        "number": "119",
        "line": "110",
        "category": "fire",
        "department": "县消防救援大队",
        "priority": 1,
        "description": "火警",
        "example": False,
    }
    county = next(item for item in items if item["number"] == FIRE_DUTY)
    assert county["example"] is True


def test_entries_carry_their_file_line(plan: NumberPlan) -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for entry in plan.entries:
        assert lines[entry.line_no - 1].startswith(entry.number + ",")


# --------------------------------------------------------------------------- valid files


def test_minimal_plan_with_comments_blank_lines_quotes_and_bom(tmp_path: Path) -> None:
    path = tmp_path / "plan.csv"
    path.write_text(
        "\ufeff# a comment\n"
        "\n"
        f"{HEADER_LINE}\r\n"
        "  # an indented comment\n"
        + LINE_ROWS
        + '119, 110, fire, "县消防救援大队", 1, "火警, 火灾", no\n'
        "05786000001,96345,water_repair,县自来水公司,4,供水抢修,yes\n",
        encoding="utf-8",
    )
    plan = load_plan(path)
    assert [entry.number for entry in plan.entries] == [
        "110",
        "96345",
        "119",
        "05786000001",
    ]
    fire = plan.entries[2]
    assert fire == PlanEntry(
        number="119",
        line="110",
        category="fire",
        department="县消防救援大队",
        priority=1,
        description="火警, 火灾",
        example=False,
        line_no=7,
    )
    assert plan.route("6000001").category == "water_repair"
    assert plan.entries[3].example is True
    assert check_plan(path) == []


def test_load_plan_accepts_str_path(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER_LINE + "\n" + LINE_ROWS)
    plan = load_plan(str(path))
    assert plan.source == path
    assert len(plan) == 2


def test_number_plan_rejects_duplicate_entries() -> None:
    entry = PlanEntry("110", "110", "police", "县公安局", 1, "报警", False, 2)
    with pytest.raises(ValueError, match="duplicate number 110"):
        NumberPlan([entry, entry], "x.csv")


# --------------------------------------------------------------------------- validation


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    [problem] = problems_of(missing)
    assert problem.startswith(f"{missing}: cannot read: ")
    assert "No such file" in problem


def test_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "plan.csv"
    path.write_bytes(
        (HEADER_LINE + "\n").encode() + "119,110,fire,县消防,1,火警,no\n".encode("gbk")
    )
    [problem] = problems_of(path)
    assert problem.startswith(f"{path}: cannot read: ")
    assert "utf-8" in problem


def test_directory_is_unreadable(tmp_path: Path) -> None:
    [problem] = problems_of(tmp_path)
    assert problem.startswith(f"{tmp_path}: cannot read: ")


def test_empty_file(tmp_path: Path) -> None:
    path = write(tmp_path, "# only a comment\n\n")
    assert problems_of(path) == [
        f'{path}:1: missing header: the first line must be "{HEADER_LINE}"',
        f"{path}:1: line number 110 is missing from the plan: add a row for 110 on line 110",
        (
            f"{path}:1: line number 96345 is missing from the plan: "
            "add a row for 96345 on line 96345"
        ),
    ]


def test_missing_header_reports_and_still_checks_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path, "# plan\n" + LINE_ROWS + "119,110,fire,县消防救援大队,0,火警,no\n"
    )
    assert problems_of(path) == [
        f'{path}:2: missing header: the first line must be "{HEADER_LINE}"',
        f'{path}:4: priority "0" must be a whole number from 1 (most urgent) to 9',
    ]


def test_wrong_header_stops_checking(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# plan\nnumber,line,category,priority,department,description,example\n"
        + "119,110,fire,1,县消防救援大队,火警,no\n",
    )
    assert problems_of(path) == [
        (
            f'{path}:2: wrong header "number,line,category,priority,department,description,'
            f'example": it must be "{HEADER_LINE}" (rows are checked once the header is right)'
        ),
    ]


def test_header_missing_a_column(tmp_path: Path) -> None:
    path = write(
        tmp_path, "number,line,category,department,priority,description\n" + LINE_ROWS
    )
    assert problems_of(path) == [
        (
            f'{path}:1: wrong header "number,line,category,department,priority,description": '
            f'it must be "{HEADER_LINE}" (rows are checked once the header is right)'
        ),
    ]


def plan_text(*rows: str) -> str:
    """Header on line 1, the two line numbers on lines 2-3, then ``rows`` from line 4."""
    return HEADER_LINE + "\n" + LINE_ROWS + "".join(row + "\n" for row in rows)


def test_wrong_number_of_columns(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        plan_text(
            "119,110,fire,县消防救援大队,1,火警",
            "120,110,ambulance,县急救站,1,医疗急救,no,extra",
            "122,110,traffic_accident,县公安局交通警察大队,2,交通事故, 报警,no",
        ),
    )
    expected = f"expected 7 columns ({HEADER_LINE}), found %d: quote a field that contains a comma"
    assert problems_of(path) == [
        f"{path}:4: " + expected % 6,
        f"{path}:5: " + expected % 8,
        f"{path}:6: " + expected % 8,
    ]


def test_missing_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        plan_text(
            ",110,fire,县消防救援大队,1,火警,no",
            "120,,ambulance,县急救站,1,医疗急救,no",
            "122,110, ,县公安局交通警察大队,2,交通事故报警,no",
            "12119,110,forest_fire,,1,森林火警,no",
            "12122,110,highway_rescue,县公安局交通警察大队,,高速公路报警救援,no",
            "12395,110,water_rescue,县应急管理局,1,,no",
            "96110,110,anti_fraud,县公安局反诈中心,2,反诈,",
            "12345,,,县政务服务便民热线,5,政务服务便民热线,no",
        ),
    )
    assert problems_of(path) == [
        f"{path}:4: missing number: fill in the number column",
        f"{path}:5: missing line: fill in the line column",
        f"{path}:6: missing category: fill in the category column",
        f"{path}:7: missing department: fill in the department column",
        f"{path}:8: missing priority: fill in the priority column",
        f"{path}:9: missing description: fill in the description column",
        f"{path}:10: missing example: fill in the example column",
        f"{path}:11: missing line: fill in the line column",
        f"{path}:11: missing category: fill in the category column",
    ]


def test_bad_csv_quoting(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        plan_text(
            '119,110,fire,"县消防救援大队,1,火警,no',
            '120,110,ambulance,"县急救站"x,1,医疗急救,no',
        ),
    )
    assert problems_of(path) == [
        f"{path}:4: cannot parse as CSV (unexpected end of data): check the quotes",
        f"{path}:5: cannot parse as CSV (',' expected after '\"'): check the quotes",
    ]


def test_unknown_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        plan_text(
            "119,119,fire,县消防救援大队,1,火警,no",
            "12345,12345,government_service,县政务服务便民热线,5,政务服务便民热线,no",
        ),
    )
    assert problems_of(path) == [
        f'{path}:4: unknown line "119": the line must be 110 or 96345',
        f'{path}:5: unknown line "12345": the line must be 110 or 96345',
    ]


def test_malformed_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        plan_text(
            "fire,110,fire,县消防救援大队,1,火警,no",
            "12,96345,government_service,县政府,5,太短,no",
            "0578612345678,96345,government_service,县政府,5,太长,no",
        ),
    )
    assert problems_of(path) == [
        f'{path}:4: number "fire" has no digits: write the number as digits, e.g. 12345',
        (
            f'{path}:5: number "12" has 2 digits after normalising (12): '
            "a number must have 3 to 12 digits"
        ),
        (
            f'{path}:6: number "0578612345678" has 13 digits after normalising (0578612345678): '
            "a number must have 3 to 12 digits"
        ),
    ]


def test_numbers_not_in_normal_form(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        plan_text(
            "6123456,96345,government_service,县政府,5,县政府,yes",
            "0578-6123457,96345,government_service,县政府,5,县政府,yes",
            "+86 578 6123458,96345,government_service,县政府,5,县政府,yes",
            "(12315),96345,consumer_complaint,县市场监督管理局,5,消费者投诉举报,no",
        ),
    )
    assert problems_of(path) == [
        f'{path}:4: number "6123456" is not in normal form: write it as 05786123456',
        f'{path}:5: number "0578-6123457" is not in normal form: write it as 05786123457',
        f'{path}:6: number "+86 578 6123458" is not in normal form: write it as 05786123458',
        f'{path}:7: number "(12315)" is not in normal form: write it as 12315',
    ]


def test_duplicate_numbers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        plan_text(
            "12345,96345,government_service,县政务服务便民热线,5,政务服务便民热线,no",
            "05786123456,96345,government_service,县政府,5,县政府,yes",
            "# a comment between",
            "12345,96345,complaint_suggestion,县信访局,5,投诉,no",
            "6123456,96345,government_service,县政府,5,县政府,yes",
            "96345,96345,public_service,县96345社会公共服务中心,5,again,no",
        ),
    )
    assert problems_of(path) == [
        f"{path}:7: duplicate number 12345 (first at line 4): keep one row per number",
        f'{path}:8: number "6123456" is not in normal form: write it as 05786123456',
        f"{path}:8: duplicate number 05786123456 (first at line 5): keep one row per number",
        f"{path}:9: duplicate number 96345 (first at line 3): keep one row per number",
    ]


def test_duplicate_of_a_broken_row(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        plan_text(
            "119,110,fire,县消防救援大队,high,火警,no",
            "119,110,fire,县消防救援大队,1,火警,no",
        ),
    )
    assert problems_of(path) == [
        f'{path}:4: priority "high" must be a whole number from 1 (most urgent) to 9',
        f"{path}:5: duplicate number 119 (first at line 4): keep one row per number",
    ]


@pytest.mark.parametrize("priority", ["0", "10", "-1", "1.5", "high", "01", "１"])
def test_bad_priority(tmp_path: Path, priority: str) -> None:
    path = write(tmp_path, plan_text(f"119,110,fire,县消防救援大队,{priority},火警,no"))
    assert problems_of(path) == [
        f'{path}:4: priority "{priority}" must be a whole number from 1 (most urgent) to 9',
    ]


@pytest.mark.parametrize("priority", [str(n) for n in range(1, 10)])
def test_good_priority(tmp_path: Path, priority: str) -> None:
    path = write(tmp_path, plan_text(f"119,110,fire,县消防救援大队,{priority},火警,no"))
    assert load_plan(path).route("119").priority == int(priority)


@pytest.mark.parametrize("example", ["y", "Yes", "true", "1", "example"])
def test_bad_example(tmp_path: Path, example: str) -> None:
    path = write(tmp_path, plan_text(f"119,110,fire,县消防救援大队,1,火警,{example}"))
    assert problems_of(path) == [
        f'{path}:4: example "{example}" must be yes (a made-up number) or no (a real number)',
    ]


@pytest.mark.parametrize(
    "category", ["Fire", "traffic-accident", "1fire", "_fire", "火警", "a b"]
)
def test_bad_category(tmp_path: Path, category: str) -> None:
    path = write(tmp_path, plan_text(f"119,110,{category},县消防救援大队,1,火警,no"))
    assert problems_of(path) == [
        (
            f'{path}:4: category "{category}" must be a lowercase slug such as traffic_accident '
            "(a-z, 0-9 and _, starting with a letter)"
        ),
    ]


def test_reserved_category(tmp_path: Path) -> None:
    path = write(tmp_path, plan_text("119,110,unlisted,县消防救援大队,1,火警,no"))
    assert problems_of(path) == [
        (
            f'{path}:4: category "unlisted" is reserved for numbers not in the plan: '
            "choose another category"
        ),
    ]


def test_line_numbers_missing(tmp_path: Path) -> None:
    path = write(tmp_path, HEADER_LINE + "\n119,110,fire,县消防救援大队,1,火警,no\n")
    assert problems_of(path) == [
        f"{path}:1: line number 110 is missing from the plan: add a row for 110 on line 110",
        (
            f"{path}:1: line number 96345 is missing from the plan: "
            "add a row for 96345 on line 96345"
        ),
    ]


def test_line_number_on_the_wrong_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER_LINE + "\n"
        "110,96345,police,县公安局指挥中心,1,报警求助,no\n"
        "96345,110,public_service,县96345社会公共服务中心,5,非紧急求助,no\n",
    )
    assert problems_of(path) == [
        f"{path}:2: line number 110 must be on line 110, not 96345",
        f"{path}:3: line number 96345 must be on line 96345, not 110",
    ]


def test_broken_line_number_row_is_reported_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        HEADER_LINE + "\n"
        "110,110,police,县公安局指挥中心,x,报警求助,no\n"
        "96345,96345,public_service,县96345社会公共服务中心,5,非紧急求助,no\n",
    )
    assert problems_of(path) == [
        f'{path}:2: priority "x" must be a whole number from 1 (most urgent) to 9',
    ]


def test_all_problems_are_collected(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "# broken on purpose\n"
        f"{HEADER_LINE}\n"
        "119,119,Fire,县消防救援大队,0,火警,maybe\n"
        "\n"
        "120,110,ambulance,县急救站\n"
        "0578-6123456,96345,government_service,,5,县政府,yes\n",
    )
    assert problems_of(path) == [
        f'{path}:3: unknown line "119": the line must be 110 or 96345',
        (
            f'{path}:3: category "Fire" must be a lowercase slug such as traffic_accident '
            "(a-z, 0-9 and _, starting with a letter)"
        ),
        f'{path}:3: priority "0" must be a whole number from 1 (most urgent) to 9',
        f'{path}:3: example "maybe" must be yes (a made-up number) or no (a real number)',
        (
            f"{path}:5: expected 7 columns ({HEADER_LINE}), found 4: "
            "quote a field that contains a comma"
        ),
        f"{path}:6: missing department: fill in the department column",
        f'{path}:6: number "0578-6123456" is not in normal form: write it as 05786123456',
        f"{path}:1: line number 110 is missing from the plan: add a row for 110 on line 110",
        (
            f"{path}:1: line number 96345 is missing from the plan: "
            "add a row for 96345 on line 96345"
        ),
    ]


def test_plan_error_message() -> None:
    error = PlanError(["a.csv:1: one", "a.csv:2: two"])
    assert error.problems == ["a.csv:1: one", "a.csv:2: two"]
    assert str(error) == "a.csv:1: one\na.csv:2: two"
