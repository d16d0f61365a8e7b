"""The man page's defaults block (docs/apeinxfs.5.md, CONFIGURATION) against the embedded defaults (defaults.toml):
each key the block sets, in the plain tables before `[[tenants]]`, is in defaults.toml with that value."""
import pathlib
import re
import tomllib

from importlib import resources

MAN_PAGE = pathlib.Path(__file__).parent.parent / "docs" / "apeinxfs.5.md"


def documented_defaults() -> dict[str, dict]:
    """{table: {key: value}} of the uncommented settings of the man page's block, up to `[[tenants]]`."""
    tables: dict[str, dict] = {}
    table = None
    for line in MAN_PAGE.read_text().splitlines():
        if match := re.match(r"    \[(\w+)\]", line):
            table = tables.setdefault(match[1], {})
        elif line.startswith("    [[tenants]]"):
            break
        elif table is not None and (match := re.match(r"    (\w+ = (?:\"[^\"]*\"|\[[^]]*\]|[^ #]+))", line)):
            table.update(tomllib.loads(match[1]))
    return tables


def test_every_default_the_man_page_lists_is_an_embedded_default():
    """Each `key = value` of the man page's defaults block is defaults.toml's, with the same value."""
    embedded = tomllib.loads(resources.files("apeinxfs").joinpath("defaults.toml").read_text())
    differ = [f"[{table}] {key} = {value!r} (defaults.toml: {embedded.get(table, {}).get(key, 'absent')!r})"
              for table, keys in documented_defaults().items() for key, value in keys.items()
              if embedded.get(table, {}).get(key) != value]
    assert differ == []
