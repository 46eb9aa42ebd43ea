"""Text from a request, made safe to put in a log line.

A log record must stay one line, whatever a client sends: a parameter name with a
line break in it would otherwise print a second, forged record under ours. Every
character that a log reader, ``str.splitlines`` or a terminal takes as the end of a
line or a control sequence is written as a Python-style escape (``\\n``, ``\\x1c``,
``\\u2028``): CR, LF, VT, FF, FS, GS, RS and the other C0 controls, DEL, NEL (U+0085)
and the Unicode line and paragraph separators (U+2028, U+2029). The escape keeps what
was sent readable, where replacing it with a space would hide it.
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# Built once: str.translate with a table is one pass in C over the text.
_ESCAPES = {
    code: _NAMED.get(chr(code), f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
    for code in (*range(0x00, 0x20), 0x7F, 0x85, 0x2028, 0x2029)
}


def log_safe(text: str) -> str:
    """``text`` on one line: line breaks and control characters escaped."""
    return text.translate(_ESCAPES)
