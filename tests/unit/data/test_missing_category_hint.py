"""A misspelled category in a real dataset: the error lists what is there and offers no demo data to write into it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from anomalib_bayes_pfl.data import AuxiliaryTrain


def test_misspelled_category_lists_categories_and_keeps_demo_data_out(
    make_datamodule: Callable[..., AuxiliaryTrain], synthetic
) -> None:
    """The error names the close match and the categories found, and suggests no generator run into that root."""
    misspelled = synthetic.source[0][:-1] + "x"
    with pytest.raises(FileNotFoundError, match=f"Did you mean '{synthetic.source[0]}'") as error:
        make_datamodule(source_categories=[misspelled]).setup()
    message = str(error.value)
    assert all(category in message for category in synthetic.categories)
    assert "python -m anomalib_bayes_pfl.data.synthetic" not in message
