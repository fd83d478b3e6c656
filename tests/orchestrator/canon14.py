"""canon14: the JSON and signing rules of RXON 1.0b14, in plain Python.

What the orchestrator (Avtomatika 1.0b27 with orjson) does to a worker's
body, re-implemented from /work/shared/PROTOCOL-1.0b14.md section 2 (no
rxon or orjson code is used or needed):

  loads(text)            parse like orjson.loads: integers outside
                         [-2^63, 2^64) become floats, NaN/Infinity and lone
                         surrogates are errors, error texts in orjson's style
                         ("input length is 0: line 1 column 1 (char 0)");
  to_dict(value)         rxon's to_dict: object members whose value is null
                         are dropped at every depth (array items are kept),
                         integral floats become ints, nesting deeper than 100
                         is a RecursionError;
  dumps(value)           orjson.dumps(..., OPT_SORT_KEYS): compact, keys
                         sorted by code point, raw UTF-8, orjson's float
                         layout, integers outside [-2^63, 2^64) a TypeError;
  canonical(payload)     the exact bytes the HMAC covers: to_dict, then the
                         top-level "security" (and ignore_fields) removed;
  sign / verify          HMAC-SHA256 with the token's UTF-8 bytes, hex;
  sign_body(...)         what a worker does: add timestamp and security.

The unit test in tests/integration/test_fakeorch14.py checks every vector of
tests/data/rxon14/signature_vectors*.json (produced by the real rxon 1.0b14
on orjson 3.8.3). fakeorch's 1.0b14 dialect (rxon14.py) and the tests'
signing client both use this module. Python 3.11 standard library only.
"""
import hashlib
import hmac
import json
import math
import re
import time

I64_MIN = -(2 ** 63)
U64_END = 2 ** 64
MAX_DEPTH = 100
JSON_WS = " \t\n\r"


class JSONParseError(ValueError):
    """orjson.JSONDecodeError's counterpart; str() is orjson's text."""


def _where(text, pos):
    line = text.count("\n", 0, pos) + 1
    col = pos - (text.rfind("\n", 0, pos) + 1) + 1
    return "line %d column %d (char %d)" % (line, col, pos)


class _Reject(Exception):
    def __init__(self, msg, token):
        super().__init__(msg)
        self.msg, self.token = msg, token


def _parse_int(s):
    v = int(s)
    if I64_MIN <= v < U64_END:
        return v
    f = float(s)  # orjson reads such literals as doubles
    if math.isinf(f):
        raise _Reject("number is infinity when parsed as double", s)
    return f


def _parse_float(s):
    f = float(s)
    if math.isinf(f):
        raise _Reject("number is infinity when parsed as double", s)
    return f


def _parse_constant(s):
    raise _Reject("unexpected character", s)


def _map_decode_error(e, text):
    """Python's json message -> orjson's (yyjson's) wording, same position."""
    msg, pos = e.msg, e.pos
    if pos >= len(text.rstrip(JSON_WS)) or msg.startswith("Unterminated string"):
        what, pos = "unexpected end of data", len(text)
    elif msg.startswith("Expecting value"):
        what = "invalid literal" if text[pos].isalpha() else "unexpected character"
    elif msg.startswith("Extra data"):
        what = "unexpected content after document"
    elif msg.startswith("Invalid control character"):
        what = "unexpected control character in string"
    elif msg.startswith("Invalid \\escape") or msg.startswith("Invalid \\uXXXX"):
        what, pos = "invalid escaped character in string", pos + 1
    else:
        what = "unexpected character"
    return JSONParseError("%s: %s" % (what, _where(text, pos)))


def _has_surrogate(v):
    if isinstance(v, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in v)
    if isinstance(v, dict):
        return any(_has_surrogate(k) or _has_surrogate(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_has_surrogate(x) for x in v)
    return False


_HIGH = re.compile(r"\\u[dD][89abAB][0-9a-fA-F]{2}")
_LOW = re.compile(r"\\u[dD][c-fC-F][0-9a-fA-F]{2}")


def _surrogate_error(text):
    for m in re.finditer(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}", text):
        if _LOW.fullmatch(m.group()):
            prev = text[max(0, m.start() - 6):m.start()]
            if not _HIGH.fullmatch(prev):
                return JSONParseError("invalid high surrogate in string: " + _where(text, m.start()))
            continue
        nxt = text[m.end():m.end() + 6]
        if _LOW.fullmatch(nxt):
            continue
        if nxt.startswith("\\u"):
            return JSONParseError("invalid low surrogate in string: " + _where(text, m.end()))
        return JSONParseError("no matched low surrogate in string: " + _where(text, m.end()))
    return JSONParseError("no matched low surrogate in string: " + _where(text, 0))


def loads(data):
    """Parse a request body (bytes must be UTF-8, as aiohttp's request.text()
    decodes them first) the way orjson.loads would."""
    if isinstance(data, (bytes, bytearray)):
        data = bytes(data).decode("utf-8")
    text = data
    if text == "":
        raise JSONParseError("input length is 0: line 1 column 1 (char 0)")
    if text.strip(JSON_WS) == "":
        raise JSONParseError("input data is empty: line 1 column 1 (char 0)")
    try:
        value = json.loads(text, parse_int=_parse_int, parse_float=_parse_float,
                           parse_constant=_parse_constant)
    except json.JSONDecodeError as e:
        raise _map_decode_error(e, text) from None
    except _Reject as e:
        raise JSONParseError("%s: %s" % (e.msg, _where(text, max(0, text.find(e.token))))) from None
    except RecursionError:
        raise JSONParseError("recursion limit reached: " + _where(text, 0)) from None
    if _has_surrogate(value):
        raise _surrogate_error(text)
    return value


def to_dict(value, _depth=0):
    """rxon.utils.to_dict on an already parsed JSON value."""
    if _depth > MAX_DEPTH:
        raise RecursionError("Maximum recursion depth (100) exceeded in to_dict")
    if isinstance(value, dict):
        return {str(k): to_dict(v, _depth + 1) for k, v in sorted(value.items()) if v is not None}
    if isinstance(value, list):
        return [to_dict(v, _depth + 1) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def format_float(x):
    """orjson's float text: the shortest round-trip digits (= repr), decimal
    down to 1e-5, else mantissa 'e' exponent without '+' or leading zeros;
    integral values keep '.0' (1.0 -> "1.0"), 1e16 -> "1e16"."""
    if math.isnan(x) or math.isinf(x):
        return "null"
    r = repr(x)
    if "e" not in r:
        return r
    mant, exp = r.split("e")
    e = int(exp)
    if e == -5:  # repr switches to exponents below 1e-4, orjson below 1e-5
        neg = mant.startswith("-")
        digits = mant.lstrip("-").replace(".", "")
        return ("-" if neg else "") + "0.0000" + digits
    return "%se%d" % (mant, e)


def _dump(v, out):
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif isinstance(v, int):
        if not I64_MIN <= v < U64_END:
            raise TypeError("Integer exceeds 64-bit range")
        out.append(str(v))
    elif isinstance(v, float):
        out.append(format_float(v))
    elif isinstance(v, str):
        out.append(json.dumps(v, ensure_ascii=False))
    elif isinstance(v, dict):
        out.append("{")
        first = True
        for k in sorted(v):
            if not isinstance(k, str):
                raise TypeError("Dict key must be str")
            if not first:
                out.append(",")
            first = False
            out.append(json.dumps(k, ensure_ascii=False))
            out.append(":")
            _dump(v[k], out)
        out.append("}")
    elif isinstance(v, (list, tuple)):
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _dump(x, out)
        out.append("]")
    else:
        raise TypeError("Type is not JSON serializable: %s" % type(v).__name__)


def dumps(value):
    """orjson.dumps(value, option=OPT_SORT_KEYS) -> bytes."""
    out = []
    _dump(value, out)
    return "".join(out).encode("utf-8")


def response_bytes(value):
    """How a 1.0b14 worker endpoint serializes its answer (rxon's
    json_dumps(to_dict(x))): nulls dropped, integral floats as ints, sorted."""
    return dumps(to_dict(value))


def canonical(payload, ignore_fields=()):
    """The bytes rxon.security.sign_payload feeds into HMAC for payload."""
    data = to_dict(payload)
    if isinstance(data, dict):
        data = dict(data)
        data.pop("security", None)
        for f in ignore_fields or ():
            data.pop(f, None)
    return dumps(data)


def sign(payload, secret, ignore_fields=()):
    """Lowercase hex HMAC-SHA256 of canonical(payload), key = secret (UTF-8)."""
    if not secret:
        raise ValueError("Secret key for signing cannot be empty.")
    return hmac.new(secret.encode("utf-8"), canonical(payload, ignore_fields), hashlib.sha256).hexdigest()


def verify(payload, signature, secret, ignore_fields=()):
    """rxon's verify_signature: compares the hex STRINGS (so an uppercase or
    non-ASCII signature never matches; non-ASCII raises TypeError like
    hmac.compare_digest does)."""
    if not signature or not secret:
        return False
    return hmac.compare_digest(sign(payload, secret, ignore_fields), signature)


def sign_body(body, secret, signer_id, ignore_fields=(), timestamp=None):
    """Make body a signed 1.0b14 message in place (and return it): integer
    `timestamp` (now unless given), `security` {signature, signer_id}."""
    body.pop("security", None)
    body["timestamp"] = int(time.time()) if timestamp is None else timestamp
    body["security"] = {"signature": sign(body, secret, ignore_fields), "signer_id": signer_id}
    return body
