"""Decode-time rules, outside the network: each rule one class (``rules``), applied as one ordered list
(``DecodeRules``); every setting, flag and default declared once (``DecodeConfig``)."""
from .config import DecodeConfig  # noqa: F401
from .rules import DecodeRules, DecodeState, SlotTable  # noqa: F401
