"""The browser tests' fixture (``stack``, one per test module); see browser_stack.py."""

from browser_stack import stack

__all__ = ["stack"]
