"""Hypothesis strategies for the fuzz suite: hostile values, config mutations, YAML text, CLI argv, image bytes."""

from __future__ import annotations

import copy
import zlib

from hypothesis import strategies as st

from ensemblekit.config import Config
from ensemblekit.methods import METHODS

NON_FINITE = [float("inf"), float("-inf"), float("nan")]
# Values that broke validation before: huge, negative, non-finite, wrong types, nested, odd strings.
HOSTILE_NUMBERS = st.sampled_from(
    [0, -1, 1, 2, 3, 10**12, -(10**12), 2**63, 2**64, 10**20, 0.0, -0.0, 1e-300, 1e12, 1e308, 0.5, 1.5, *NON_FINITE]
)
LONG_STRING = st.integers(10_000, 10_001).map(lambda n: "x" * n)  # its repr stays short in hypothesis' statistics
ODD_STRINGS = ["", " ", "a", "0", "1e12", ".inf", "null", "true", "../..", "/dev/zero", "caf\u00e9", "\udcff"]
NAMES = ["resnet8", "sgd", "cosine", "cpu", "auto", "all", "synthetic", "step"]
HOSTILE_STRINGS = LONG_STRING | st.sampled_from([*ODD_STRINGS, *NAMES])
SCALARS = st.one_of(
    HOSTILE_NUMBERS,
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    HOSTILE_STRINGS,
    st.text(max_size=30),
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=8,
)

BASE = {
    "data": {"name": "synthetic", "train_size": 64, "test_size": 32, "batch_size": 32, "eval_batch_size": 64},
    "model": {"name": "resnet8", "width": 0.25},
    "method": {"name": "single"},
    "train": {"epochs": 1, "lr": 0.05, "seed": 0},
    "runtime": {"accelerator": "cpu", "num_threads": 1},
}


def _known_keys() -> list[tuple[str, str]]:
    keys = []
    for section, field in Config.model_fields.items():
        if section == "meta":
            continue
        sub = field.annotation
        for name in getattr(sub, "model_fields", {}):
            keys.append((section, name))
    for name in METHODS.names():
        for option in METHODS.get(name).Options.model_fields:
            keys.append(("method", option))
    return sorted(set(keys))


KNOWN_KEYS = _known_keys()
SECTIONS = ["data", "model", "method", "train", "runtime"]
KEY_PATHS = st.one_of(
    st.sampled_from(KNOWN_KEYS).map(list),
    st.tuples(st.sampled_from(SECTIONS), st.text(max_size=10)).map(list),
    st.lists(st.text(max_size=6), min_size=1, max_size=3),
)


@st.composite
def mutated_configs(draw) -> dict:
    """A valid tiny config with 1-4 fields replaced, added or deleted, sometimes with another method name."""
    raw = copy.deepcopy(BASE)
    if draw(st.booleans()):
        raw["method"]["name"] = draw(st.sampled_from(METHODS.names()))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(KEY_PATHS)
        node = raw
        for part in path[:-1]:
            child = node.get(part) if isinstance(node, dict) else None
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        if draw(st.integers(0, 9)) == 0:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = draw(VALUES)
    if draw(st.integers(0, 19)) == 0:
        raw[draw(st.sampled_from(SECTIONS))] = draw(VALUES)  # a whole section of the wrong type
    return raw


VALUE_TEXT = st.one_of(
    st.text(max_size=40),
    HOSTILE_STRINGS,
    st.sampled_from(
        [
            "[1,",
            "{a: 1",
            "&a [*a]",
            "!!python/object/apply:os.system ['true']",
            "!!binary AAAA",
            "- - - -",
            "[1, 2, 3]",
            "{x: .nan}",
            "1e999",
            "0x1F",
            "0o17",
            "1_000",
            "~",
            "'quoted'",
            '"dq\\x00"',
            "!!float inf",
            "2001-12-14",
            "? complex key",
            "|\n  block",
            "*undefined",
        ]
    ),
    HOSTILE_NUMBERS.map(str),
)


@st.composite
def set_overrides(draw) -> list[str]:
    """1-4 ``--set key.sub=value`` texts, keys from the schema (and nonsense), values as typed on a shell."""
    out = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.integers(0, 9))
        if kind == 0:
            out.append(draw(st.text(max_size=20)))  # maybe without '='
            continue
        path = draw(KEY_PATHS)
        out.append(".".join(path) + "=" + draw(VALUE_TEXT))
    return out


YAML_ATOMS = st.sampled_from(
    [
        "data",
        "model",
        "method",
        "train",
        "runtime",
        "name",
        "lr",
        "epochs",
        "members",
        "seed",
        "width",
        "kwargs",
        "1",
        "-1",
        "1e12",
        ".inf",
        ".nan",
        "null",
        "true",
        "resnet8",
        "synthetic",
        "deep_ensemble",
        "'s'",
        "[]",
        "{}",
        "&a",
        "*a",
        "&b",
        "*b",
        "!!python/name:os.system",
        "!!python/object/apply:os.system",
        "<<",
        "? ",
        "|",
        ">",
        "---",
        "...",
        "#",
        "%YAML 1.2",
        "\t",
        "\\u0000",
        "\udcff",
    ]
)


@st.composite
def yaml_documents(draw) -> str:
    """Text shaped like YAML: random atoms joined by YAML punctuation, indentation and newlines."""
    parts = []
    for _ in range(draw(st.integers(0, 30))):
        parts.append(draw(YAML_ATOMS))
        parts.append(draw(st.sampled_from([": ", ":", ", ", "\n", "\n  ", "\n    ", " - ", "[", "]", "{", "}", " "])))
    if draw(st.booleans()):
        parts.insert(0, "data: {name: synthetic}\nmodel: {name: resnet8}\n")
    return "".join(parts)


@st.composite
def image_bytes(draw) -> bytes:
    """Bytes of a would-be image file: valid tiny PNGs, mutated or truncated ones, hostile headers, noise."""
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return draw(st.binary(max_size=200))
    width = draw(st.sampled_from([0, 1, 4, 8, 65535, 2**31 - 1, 20000]))
    height = draw(st.sampled_from([0, 1, 4, 8, 65535, 2**31 - 1, 20000]))
    color = draw(st.sampled_from([0, 2, 3, 4, 6, 7]))
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, color, 0, 0, 0])
    rows = b"".join(b"\x00" + b"\x7f" * (3 * min(width, 8)) for _ in range(min(height, 8)))
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")
    data = b"\x89PNG\r\n\x1a\n" + body
    if kind == 2:
        data = data[: draw(st.integers(0, len(data)))]
    elif kind == 3:
        i = draw(st.integers(0, len(data) - 1))
        data = data[:i] + bytes([draw(st.integers(0, 255))]) + data[i + 1 :]
    elif kind == 4:
        text = _chunk(b"zTXt", b"k\x00\x00" + zlib.compress(b"x" * draw(st.sampled_from([10, 10**6, 40 * 10**6]))))
        data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + text + body[25:]
    return data


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


SMALL_VALUES = st.one_of(
    st.integers(-2, 12),
    st.sampled_from([0.0, 0.1, 0.5, 0.99, 1.0, 2.0, 1e-9]),
    st.booleans(),
    st.none(),
    st.sampled_from(["loop", "packed", "auto", "global", "layerwise", "snip", "grasp", "synflow", "magnitude"]),
    st.sampled_from(["random", "partition", "anti_random", "sparse", "noisy", "stochastic", "blob", "official"]),
)


@st.composite
def method_configs(draw) -> dict:
    """A tiny config of a random method and backbone with 0-3 of the method's own options set to small values."""
    raw = copy.deepcopy(BASE)
    name = draw(st.sampled_from(METHODS.names()))
    raw["method"]["name"] = name
    raw["model"]["name"] = draw(st.sampled_from(["resnet8", "resnet8", "vgg11", "densenet40", "wrn16_4"]))
    options = sorted(METHODS.get(name).Options.model_fields)
    for _ in range(draw(st.integers(0, 3))):
        raw["method"][draw(st.sampled_from(options))] = draw(SMALL_VALUES)
    return raw
