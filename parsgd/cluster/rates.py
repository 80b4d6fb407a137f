"""Link rates and delays as the user writes them (`100mbit`, `1gbit`, `10gbit`; `5ms`), as tc reads them.

    python -c "from parsgd.cluster.rates import parse_rate; print(parse_rate('1gbit'))"   # 1000000000.0

Units are tc's: `kbit`, `mbit`, `gbit` are 10**3, 10**6, 10**9 bits per second (not bytes).
"""
from __future__ import annotations

import math
import re

from parsgd.errors import UsageError

RATE_UNITS = {"bit": 1.0, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}
DELAY_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
RATE_MIN_BPS = 1e5     # below 100kbit a 1 MB parameter vector takes minutes
RATE_MAX_BPS = 1e11
DELAY_MAX_S = 10.0
_NUMBER = r"(\d+(?:\.\d+)?)"


class LinkOptionError(UsageError, ValueError):
    """--link / --link-delay cannot be read (exit 2); the message shows a right value."""


def parse_rate(text: str, option: str = "--link") -> float:
    """'100mbit' -> 1e8 bits per second. Raises LinkOptionError naming `option` and an example."""
    m = re.fullmatch(_NUMBER + r"\s*([a-z]+)", str(text).strip().lower())
    if not m or m.group(2) not in RATE_UNITS:
        raise LinkOptionError(f"{option} {text}: not a link rate: write a number and one of "
                              f"{', '.join(RATE_UNITS)} (bits per second, as tc), e.g. {option} 100mbit")
    bps = float(m.group(1)) * RATE_UNITS[m.group(2)]
    if not RATE_MIN_BPS <= bps <= RATE_MAX_BPS:
        raise LinkOptionError(f"{option} {text}: out of range: a link rate is from 100kbit to 100gbit")
    return bps


def parse_rates(value, option: str = "--link") -> tuple[str, ...]:
    """'100mbit,1gbit', '100mbit 1gbit' or a repeated flag -> ('100mbit', '1gbit'), each checked by
    parse_rate, normalised by format_rate, none twice. Raises LinkOptionError."""
    parts = value if isinstance(value, (list, tuple)) else [value]
    out = []
    for part in parts:
        for tok in str(part or "").replace(",", " ").split():
            name = format_rate(parse_rate(tok, option))
            if name in out:
                raise LinkOptionError(f"{option} gives {name} twice: give each rate once")
            out.append(name)
    return tuple(out)


def format_rate(bps: float) -> str:
    """1e8 -> '100mbit', 1.5e9 -> '1500mbit': the largest unit that gives a whole number."""
    for unit in ("tbit", "gbit", "mbit", "kbit"):
        value = bps / RATE_UNITS[unit]
        if value >= 1 and abs(value - round(value)) < 1e-9:
            return f"{int(round(value))}{unit}"
    return f"{bps:g}bit"


def parse_delay(text: str, option: str = "--link-delay") -> float:
    """'5ms' -> 0.005 seconds (us, ms or s; a bare number is ms). Raises LinkOptionError."""
    m = re.fullmatch(_NUMBER + r"\s*([a-z]*)", str(text).strip().lower())
    unit = m.group(2) or "ms" if m else None
    if not m or unit not in DELAY_UNITS:
        raise LinkOptionError(f"{option} {text}: not a delay: write a number and us, ms or s, e.g. {option} 5ms")
    seconds = float(m.group(1)) * DELAY_UNITS[unit]
    if not (math.isfinite(seconds) and 0 <= seconds <= DELAY_MAX_S):
        raise LinkOptionError(f"{option} {text}: out of range: a one-way delay is from 0 to {DELAY_MAX_S:g} s")
    return seconds


def tc_time(seconds: float) -> str:
    """A duration as tc writes it, in whole microseconds: 0.005 -> '5000us'."""
    return f"{max(1, int(round(seconds * 1e6)))}us"
