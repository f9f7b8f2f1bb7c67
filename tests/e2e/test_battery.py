"""Every case of the fault and abuse battery (tests/support/battery.py) ends clean: the expected exit code
and one-line message, no traceback, no hang, nothing lost."""

import pytest

import battery

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    return battery.Context(tmp_path_factory.mktemp("battery"))


@pytest.mark.parametrize("name", list(battery.CASES))
def test_case_is_clean(ctx, name):
    try:
        outcome = battery.CASES[name](ctx)
    except battery.Skip as e:
        pytest.skip(str(e))
    assert outcome.verdict == "clean", (
        f"{outcome.verdict}: rc={outcome.rc} lost={outcome.lost}\n{outcome.output[-2500:]}"
    )
