"""Parsing TVMScript at run time without its cost under deep stacks.

TVMScript's decorator calls `inspect.stack()`, which reads the source file of every frame on
the stack: importing TVM's ~250 CUDA tensor intrinsics took 90 s in a plain process here and
minutes under pytest. The parser looks at the first three frames only (for the names a
function's body refers to), so parsing with a stack of four frames is the same and fast."""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def shallow_stack() -> Iterator[None]:
    full = inspect.stack

    def shallow(context: int = 1) -> list[inspect.FrameInfo]:
        frame, frames = sys._getframe(1), []
        while frame is not None and len(frames) < 4:
            frames.append(inspect.FrameInfo(frame, *inspect.getframeinfo(frame, context)))
            frame = frame.f_back
        return frames

    inspect.stack = shallow
    try:
        yield
    finally:
        inspect.stack = full
