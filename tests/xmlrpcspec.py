"""A strict reader of XML-RPC responses: the specification's structure, checked.

Python's ``xmlrpc.client`` reads whatever it is given (two nested
``<params>``, a fault that is not a struct) and so cannot tell a malformed
response from a good one.  ``read_response`` checks a ``methodResponse``
against the specification (xmlrpc.com/spec) as a strict client of another
language would, and returns what it carries:

- exactly one element in ``<methodResponse>``: ``<params>`` holding exactly
  one ``<param>`` holding exactly one ``<value>``, or ``<fault>`` holding one
  ``<value>`` whose struct has exactly ``faultCode`` (an int) and
  ``faultString`` (a string);
- a ``<value>`` is text (a string) or exactly one typed element: ``<int>`` or
  ``<i4>`` within 32 bits, ``<i8>`` (the extension Apache's and Python's
  clients read) within 64 bits, ``<boolean>`` 0 or 1, ``<string>``,
  ``<double>``, ``<dateTime.iso8601>``, ``<base64>``, ``<struct>`` of
  ``<member>``s (``<name>`` then ``<value>``), ``<array>`` of one ``<data>``
  of ``<value>``s.  ``<nil/>`` only when ``allow_nil``;
- no attributes, no text outside the scalar elements but whitespace.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any
from xml.etree.ElementTree import Element

from defusedxml.ElementTree import fromstring

INT32 = (-(2**31), 2**31 - 1)
INT64 = (-(2**63), 2**63 - 1)
INTEGER = re.compile(r"[+-]?[0-9]+")
DOUBLE = re.compile(r"[+-]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?")
DATETIME = re.compile(r"[0-9]{8}T[0-9]{2}:[0-9]{2}:[0-9]{2}")


class SpecViolation(AssertionError):
    """The bytes are not a methodResponse as the specification shapes it."""


def read_response(body: bytes, allow_nil: bool = False) -> tuple[str, Any]:
    """``("params", value)`` or ``("fault", {faultCode, faultString})``."""
    try:
        root = fromstring(body, forbid_dtd=True)
    except Exception as e:  # noqa: BLE001 - any parse error is a violation
        raise SpecViolation(f"not well-formed XML: {e}") from None
    _plain(root, "methodResponse")
    (only,) = _children(root, "methodResponse", 1)
    if only.tag == "params":
        _plain(only, "params")
        (param,) = _children(only, "params", 1, {"param"})
        _plain(param, "param")
        (value,) = _children(param, "param", 1, {"value"})
        return "params", _value(value, allow_nil)
    if only.tag == "fault":
        _plain(only, "fault")
        (value,) = _children(only, "fault", 1, {"value"})
        fault = _value(value, allow_nil)
        if not isinstance(fault, dict) or set(fault) != {"faultCode", "faultString"}:
            raise SpecViolation(
                f"a fault's value must be a struct of "
                f"faultCode and faultString, not {fault!r}"
            )
        if type(fault["faultCode"]) is not int:
            raise SpecViolation(f"faultCode must be an int: {fault!r}")
        if not isinstance(fault["faultString"], str):
            raise SpecViolation(f"faultString must be a string: {fault!r}")
        return "fault", fault
    raise SpecViolation(f"methodResponse holds <{only.tag}>, not params or fault")


def _children(
    element: Element, where: str, count: int | None = None, tags: set[str] | None = None
) -> list[Element]:
    children = list(element)
    if count is not None and len(children) != count:
        names = [c.tag for c in children]
        raise SpecViolation(f"<{where}> must hold {count} element(s), holds {names}")
    for child in children:
        if tags is not None and child.tag not in tags:
            raise SpecViolation(f"<{where}> may not hold <{child.tag}>")
        if (child.tail or "").strip():
            raise SpecViolation(f"text {child.tail!r} after <{child.tag}>")
    return children


def _plain(element: Element, where: str) -> None:
    """A container: no attributes, only whitespace between its elements."""
    if element.tag != where:
        raise SpecViolation(f"expected <{where}>, got <{element.tag}>")
    if element.attrib:
        raise SpecViolation(f"<{where}> has attributes {element.attrib}")
    if (element.text or "").strip():
        raise SpecViolation(f"text {element.text!r} inside <{where}>")


def _value(element: Element, allow_nil: bool) -> Any:
    if element.attrib:
        raise SpecViolation(f"<value> has attributes {element.attrib}")
    children = list(element)
    if not children:
        return element.text or ""  # a value without a type is a string
    if (element.text or "").strip():
        raise SpecViolation(f"text {element.text!r} beside <{children[0].tag}>")
    (typed,) = _children(element, "value", 1)
    if typed.attrib:
        raise SpecViolation(f"<{typed.tag}> has attributes {typed.attrib}")
    tag = typed.tag
    if tag == "struct":
        _plain(typed, "struct")
        members = {}
        for member in _children(typed, "struct", tags={"member"}):
            _plain(member, "member")
            name, value = _children(member, "member", 2)
            if name.tag != "name" or value.tag != "value" or list(name):
                raise SpecViolation("a <member> is <name> (text) then <value>")
            members[name.text or ""] = _value(value, allow_nil)
        return members
    if tag == "array":
        _plain(typed, "array")
        (data,) = _children(typed, "array", 1, {"data"})
        _plain(data, "data")
        return [_value(v, allow_nil) for v in _children(data, "data", tags={"value"})]
    if list(typed):
        raise SpecViolation(f"<{tag}> is a scalar and holds elements")
    text = typed.text or ""
    if tag in ("int", "i4", "i8"):
        low, high = INT64 if tag == "i8" else INT32
        if not INTEGER.fullmatch(text) or not low <= int(text) <= high:
            raise SpecViolation(f"<{tag}>{text}</{tag}> is out of its range")
        return int(text)
    if tag == "boolean":
        if text not in ("0", "1"):
            raise SpecViolation(f"<boolean> must be 0 or 1, not {text!r}")
        return text == "1"
    if tag == "string":
        return text
    if tag == "double":
        if not DOUBLE.fullmatch(text):
            raise SpecViolation(f"<double>{text}</double> is not a number")
        return float(text)
    if tag == "dateTime.iso8601":
        if not DATETIME.fullmatch(text):
            raise SpecViolation(f"<dateTime.iso8601>{text}</dateTime.iso8601>")
        return text
    if tag == "base64":
        try:
            return base64.b64decode("".join(text.split()), validate=True)
        except binascii.Error as e:
            raise SpecViolation(f"<base64> does not decode: {e}") from None
    if tag == "nil" and allow_nil:
        return None
    raise SpecViolation(f"<value> holds an unknown type <{tag}>")
