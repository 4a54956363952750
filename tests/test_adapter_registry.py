"""The adapter registry and its errors (no third-party package needed)."""

from __future__ import annotations

import pytest

from gffmerge import adapters
from gffmerge.adapters.chgnet import ChgnetAdapter


def test_names_and_unknown_name():
    assert {"chgnet", "sevenn-0"} <= set(adapters.names())
    with pytest.raises(KeyError, match="unknown foundation adapter 'mace'.*chgnet"):
        adapters.get("mace")


def test_missing_package_is_one_line_naming_the_extra():
    class Absent(ChgnetAdapter):
        package = "gffmerge_no_such_package"

    with pytest.raises(adapters.MissingExtraError) as info:
        Absent().require()
    assert "pip install 'gffmerge[chgnet]'" in str(info.value)
    assert "\n" not in str(info.value)
