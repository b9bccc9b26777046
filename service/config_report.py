"""`python -m service config`: the effective configuration as TOML, each key with its description,
default, allowed values and where its value came from; secrets masked."""

import dataclasses
import textwrap

from .config import CONFIG_FILE_VARIABLE, Config, allowed, shown

HEADER = f"""\
# aiagent-live: the effective configuration.
# The defaults are declared once, in service/config.py. A TOML file overrides them (--config, else
# {CONFIG_FILE_VARIABLE}, else a checkout's config/aiagent-live.toml), and the environment overrides
# the file: each key as a variable of its name in upper case (PORT=9000, DATABASE_URL=...).
"""


def render(config: Config, sources: dict[str, str]) -> str:
    lines = [HEADER]
    for field in dataclasses.fields(Config):
        name = field.name
        lines += textwrap.wrap(field.metadata["description"], 100,
                               initial_indent="# ", subsequent_indent="# ")
        lines.append(f"# default: {shown(name, field.default)}; allowed: {allowed(name)}")
        if name in sources:
            lines.append(f"# set by: {sources[name]}")
        lines += [f"{name} = {shown(name, getattr(config, name))}", ""]
    return "\n".join(lines)
