"""Whether a primary's `synchronous_standby_names` counts a walsender as a synchronous standby.

Any walsender whose application_name the setting names (or `*`, which names every one) may be
chosen, a logical one too. The wal listener must never be: every commit in the cluster would then
wait for its feedback (about a second, its status interval), and its "flushed" would stand in for
a standby that keeps no WAL. So the listener is refused where the setting names it.

The setting's grammar (PostgreSQL's syncrep_gram.y): `name, ...`, `N (name, ...)`,
`FIRST N (name, ...)` or `ANY N (name, ...)`; a name is an identifier, a number, `*`, or a
double-quoted string with `""` for a quote, and is compared without regard to ASCII case.
"""

import re

# What refusal() needs to know of a server: whether it is a standby, and its setting (as of its
# last reload; any role may read both, where pg_stat_replication's sync_state needs
# pg_read_all_stats).
QUERY = "SELECT pg_is_in_recovery(), current_setting('synchronous_standby_names')"

# A double-quoted name, or a run of what is neither a separator nor a quote (an identifier, a
# number, `*`, or the keywords FIRST and ANY, which never equal a walsender's name).
TOKEN = re.compile(r'"((?:[^"]|"")*)"|([^\s,()"]+)')


def refusal(standby: bool, setting: str, application_name: str) -> str | None:
    """What to change when a server counts the walsender `application_name` as a synchronous
    standby; None when it does not. A standby never does: PostgreSQL has no cascading synchronous
    replication."""
    if standby or not names(setting, application_name):
        return None
    return (f"synchronous_standby_names = '{setting}' counts the wal listener (application_name "
            f"'{application_name}') as a synchronous standby (every commit would wait for it, and it "
            "keeps no WAL): list only the standbys, by name")


def names(setting: str, application_name: str) -> bool:
    """Whether a walsender called `application_name` is a candidate under `setting`."""
    wanted = application_name.lower()
    for quoted, bare in TOKEN.findall(setting):
        name = bare or quoted.replace('""', '"')
        if name == "*" or name.lower() == wanted:
            return True
    return False
