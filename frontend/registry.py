"""The op-handler table both frontends fill with a decorator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Handler = Callable[..., Any]


class HandlerTable(dict[str, Handler]):
    """op name -> handler; `@table.handles("Add", "Sub")` registers one handler for several."""

    def handles(self, *names: str) -> Callable[[Handler], Handler]:
        def deco(fn: Handler) -> Handler:
            for name in names:
                self[name] = fn
            return fn

        return deco
