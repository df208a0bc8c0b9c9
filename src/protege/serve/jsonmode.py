"""`response_format: {"type": "json_object"}`: a character-level JSON prefix checker.

The decoder asks it, for each candidate token, whether the output would still be the prefix of one
JSON object; only such tokens may be chosen, and the row ends when the object closes. A small
pushdown automaton is enough here: a grammar engine (outlines, lm-format-enforcer) would be a heavy
dependency for the one grammar we need, and candidates are checked only among the top-k tokens.
"""

from __future__ import annotations

import re

_NUMBER_PREFIX = re.compile(r"-?(0|[1-9]\d*)?(\.\d*)?([eE][+-]?\d*)?")
_NUMBER_FULL = re.compile(r"-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?")
_WS = " \t\n\r"
_LITERALS = ("true", "false", "null")


class JsonPrefix:
    """Feeds characters; `feed` returns False as soon as the text can no longer become a JSON object."""

    __slots__ = ("stack", "mode", "buf", "is_key", "escape", "hex_left")

    def __init__(self) -> None:
        self.stack: list[str] = []
        self.mode = "start"  # start|value|key_or_end|key|colon|after|string|number|literal|done
        self.buf = ""
        self.is_key = False
        self.escape = False
        self.hex_left = 0

    def copy(self) -> JsonPrefix:
        other = JsonPrefix.__new__(JsonPrefix)
        other.stack = list(self.stack)
        other.mode, other.buf, other.is_key = self.mode, self.buf, self.is_key
        other.escape, other.hex_left = self.escape, self.hex_left
        return other

    @property
    def done(self) -> bool:
        return self.mode == "done"

    def feed_text(self, text: str) -> bool:
        return all(self.feed(ch) for ch in text)

    def feed(self, ch: str) -> bool:
        handler = getattr(self, f"_{self.mode}")
        return handler(ch)

    # ---- one method per mode ------------------------------------------------------------------
    def _start(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch != "{":
            return False
        self.stack.append("{")
        self.mode = "key_or_end"
        return True

    def _done(self, ch: str) -> bool:
        return ch in _WS

    def _value(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch in "{[":
            self.stack.append(ch)
            self.mode = "key_or_end" if ch == "{" else "value_or_end"
            return True
        if ch == '"':
            self.mode, self.is_key = "string", False
            return True
        if ch == "-" or ch.isdigit():
            self.mode, self.buf = "number", ch
            return True
        if ch in "tfn":
            self.mode, self.buf = "literal", ch
            return True
        return False

    def _value_or_end(self, ch: str) -> bool:
        if ch == "]":
            return self._close(ch)
        if ch in _WS:
            return True
        self.mode = "value"
        return self._value(ch)

    def _key_or_end(self, ch: str) -> bool:
        if ch == "}":
            return self._close(ch)
        return self._key(ch)

    def _key(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch == '"':
            self.mode, self.is_key = "string", True
            return True
        return False

    def _colon(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch == ":":
            self.mode = "value"
            return True
        return False

    def _after(self, ch: str) -> bool:
        if ch in _WS:
            return True
        if ch == ",":
            self.mode = "key" if self.stack[-1] == "{" else "value"
            return True
        if ch in "}]":
            return self._close(ch)
        return False

    def _close(self, ch: str) -> bool:
        if not self.stack or {"}": "{", "]": "["}[ch] != self.stack[-1]:
            return False
        self.stack.pop()
        self.mode = "after" if self.stack else "done"
        return True

    def _string(self, ch: str) -> bool:
        if self.hex_left:
            if ch not in "0123456789abcdefABCDEF":
                return False
            self.hex_left -= 1
            return True
        if self.escape:
            self.escape = False
            if ch == "u":
                self.hex_left = 4
                return True
            return ch in '"\\/bfnrt'
        if ch == "\\":
            self.escape = True
            return True
        if ch == '"':
            self.mode = "colon" if self.is_key else "after"
            return True
        return ch >= " "  # control characters must be escaped

    def _number(self, ch: str) -> bool:
        if ch in "0123456789+-.eE":
            candidate = self.buf + ch
            if _NUMBER_PREFIX.fullmatch(candidate):
                self.buf = candidate
                return True
            return False
        if not _NUMBER_FULL.fullmatch(self.buf):
            return False
        self.mode = "after"
        return self._after(ch)

    def _literal(self, ch: str) -> bool:
        candidate = self.buf + ch
        if any(lit.startswith(candidate) for lit in _LITERALS):
            self.buf = candidate
            if candidate in _LITERALS:
                self.mode = "after"
            return True
        return False
