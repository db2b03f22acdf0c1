"""environ: variables set or unset for a block and put back exactly, also when the block raises."""

from __future__ import annotations

import os

import pytest

from benchmark.core.environ import environ


def test_set_and_unset_for_a_block_then_put_back_even_after_an_exception(monkeypatch):
    monkeypatch.setenv("NB_TEST_SET", "before")
    monkeypatch.delenv("NB_TEST_UNSET", raising=False)
    monkeypatch.setenv("NB_TEST_REMOVED", "kept")
    values = {"NB_TEST_SET": "during", "NB_TEST_UNSET": "new", "NB_TEST_REMOVED": None}
    with pytest.raises(RuntimeError), environ(values) as saved:
        assert saved == {"NB_TEST_SET": "before", "NB_TEST_UNSET": None, "NB_TEST_REMOVED": "kept"}
        assert os.environ["NB_TEST_SET"] == "during" and os.environ["NB_TEST_UNSET"] == "new"
        assert "NB_TEST_REMOVED" not in os.environ
        raise RuntimeError("the block fails")
    assert os.environ["NB_TEST_SET"] == "before" and os.environ["NB_TEST_REMOVED"] == "kept"
    assert "NB_TEST_UNSET" not in os.environ
