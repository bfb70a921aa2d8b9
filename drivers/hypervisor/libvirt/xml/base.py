"""Small lxml helpers shared by the typed libvirt XML element classes.

Every element class in this package is a frozen dataclass with ``parse(el) -> Self`` and
``build() -> etree._Element`` side by side. Values only ever enter XML as element text or
attribute values set through lxml, which escapes them; nothing is formatted into XML text.
lxml refuses characters XML cannot carry (NUL, most control characters) with ValueError; the
spec builder turns that into InvalidArgument naming the field.
"""

from __future__ import annotations

from typing import Protocol

from lxml import etree

Element = etree._Element

#: libvirt's size units -> bytes (docs: formatdomain.html#memory-allocation)
_UNITS: dict[str, int] = {
    "b": 1,
    "bytes": 1,
    "kb": 1000,
    "k": 1024,
    "kib": 1024,
    "mb": 1000**2,
    "m": 1024**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "g": 1024**3,
    "gib": 1024**3,
    "tb": 1000**4,
    "t": 1024**4,
    "tib": 1024**4,
    "pb": 1000**5,
    "p": 1024**5,
    "pib": 1024**5,
    "eb": 1000**6,
    "e": 1024**6,
    "eib": 1024**6,
}


def to_bytes(value: str, unit: str | None, default_unit: str) -> int:
    """Convert a libvirt scaled integer (``<memory unit='MiB'>64</memory>``) to bytes."""
    factor = _UNITS.get((unit or default_unit).lower())
    if factor is None:
        raise ValueError(f"unknown size unit {unit!r}")
    return int(value.strip()) * factor


def make(tag: str, text: str | None = None, **attrs: str | None) -> Element:
    """A new element; attributes whose value is None are left out."""
    el = etree.Element(tag)
    _fill(el, text, attrs)
    return el


def sub(parent: Element, tag: str, text: str | None = None, **attrs: str | None) -> Element:
    """Append a child element; attributes whose value is None are left out."""
    el = etree.SubElement(parent, tag)
    _fill(el, text, attrs)
    return el


def _fill(el: Element, text: str | None, attrs: dict[str, str | None]) -> None:
    for key, value in attrs.items():
        if value is not None:
            el.set(key.rstrip("_"), value)  # trailing "_" allows Python keywords (type_)
    if text is not None:
        el.text = text


def child(el: Element, tag: str) -> Element | None:
    found = el.find(tag)
    return found


def child_text(el: Element, tag: str) -> str | None:
    """Text of the first child ``tag``; "" for an empty element, None when absent."""
    found = el.find(tag)
    if found is None:
        return None
    return found.text or ""


def attr(el: Element | None, name: str) -> str | None:
    if el is None:
        return None
    return el.get(name)


def int_attr(el: Element | None, name: str, default: int = 0) -> int:
    """Integer attribute in decimal or 0x-hex (PCI addresses use hex)."""
    value = attr(el, name)
    if value is None or value == "":
        return default
    return int(value, 0)


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def on_off(value: bool) -> str:
    return "on" if value else "off"


def to_string(el: Element) -> str:
    return etree.tostring(el, pretty_print=True, encoding="unicode")


def from_string(xml: str) -> Element:
    """Parse libvirt XML; entity resolution and network access are off."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=True)
    return etree.fromstring(xml.encode(), parser)


def expect_tag(el: Element, tag: str) -> None:
    if el.tag != tag:
        raise ValueError(f"expected <{tag}>, got <{el.tag}>")


class Buildable(Protocol):
    """Anything that turns itself into one lxml element."""

    def build(self) -> Element: ...
