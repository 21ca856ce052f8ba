"""Channel templates, without a database."""

from __future__ import annotations

import pytest

from tidings.bridges import ChannelTemplate, RenderError
from tidings.errors import UsageError


def test_renders_columns_into_the_name() -> None:
    template = ChannelTemplate.parse("prices:{symbol}")
    assert template.columns == ("symbol",)
    assert template.render({"symbol": "AAPL", "price": 1}) == "prices:AAPL"
    both = ChannelTemplate.parse("orders:{shop}-{id}")
    assert both.render({"shop": "x", "id": 7}) == "orders:x-7"
    assert ChannelTemplate.parse("all").render({}) == "all"
    assert ChannelTemplate.parse("{flag}").render({"flag": True}) == "true"


@pytest.mark.parametrize("text", ["prices {symbol}", "a:{}", "a:{b", "a:b}", "", "{a}{b}}"])
def test_refuses_templates_that_cannot_name_channels(text: str) -> None:
    with pytest.raises(UsageError):
        ChannelTemplate.parse(text)


def test_names_missing_columns_clearly() -> None:
    template = ChannelTemplate.parse("prices:{sym}")
    template.check_columns("prices", ["sym", "price"])
    with pytest.raises(UsageError, match=r"names column 'sym', which table prices does not "
                                         r"have \(its columns: symbol, price\)"):
        template.check_columns("prices", ["symbol", "price"])


@pytest.mark.parametrize("row", [{}, {"symbol": None}, {"symbol": "a b"}, {"symbol": [1]},
                                 {"symbol": "x" * 200}])
def test_rows_without_a_valid_name_raise(row: dict[str, object]) -> None:
    with pytest.raises(RenderError):
        ChannelTemplate.parse("prices:{symbol}").render(row)
