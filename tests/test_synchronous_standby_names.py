"""Which settings of synchronous_standby_names count the wal listener as a synchronous standby
(PostgreSQL's grammar; the real server's verdict is checked in test_wal_listener and
test_decoding_preflight)."""

import pytest

from service.push.synchronous_standby_names import names, refusal
from service.push.wal_listener import APPLICATION_NAME


@pytest.mark.parametrize("setting", [
    "*",
    "FIRST 1 (*)",
    "any 2 (standby1, *)",
    "2 (standby1,*)",
    '"*"',
    '"aiagent-live wal listener"',
    'FIRST 1 (standby1, "AIAGENT-LIVE Wal Listener")',
    ' standby1 , "aiagent-live wal listener" ',
])
def test_a_wildcard_or_the_listeners_name_counts_it(setting):
    assert names(setting, APPLICATION_NAME)


@pytest.mark.parametrize("setting", [
    "",
    "standby1",
    "FIRST 2 (standby1, standby2)",
    "ANY 1 (standby1, standby2)",
    '"aiagent-live wal listener 2", "a ""*"" name"',
    "aiagent-live",
])
def test_named_standbys_only_do_not_count_it(setting):
    assert not names(setting, APPLICATION_NAME)


def test_the_refusal_names_the_setting_its_value_and_the_listener():
    said = refusal(False, "FIRST 1 (*)", APPLICATION_NAME)
    assert "synchronous_standby_names = 'FIRST 1 (*)'" in said and APPLICATION_NAME in said
    assert refusal(False, "standby1", APPLICATION_NAME) is None
    assert refusal(True, "FIRST 1 (*)", APPLICATION_NAME) is None  # a standby's walsenders never are
