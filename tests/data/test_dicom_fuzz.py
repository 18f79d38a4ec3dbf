"""rsna.data.dicom under fuzzing: mutated files give pydicom's image or a DicomError, fast.

Hypothesis mutates valid slices in five encodings: truncation at any length, length
fields, VRs, numeric strings (inf, nan, huge, empty), dimensions, the transfer syntax,
and random bytes. Every outcome must be an image equal to pydicom's own reading of the
same bytes, or a :class:`DicomError`; never another exception, never more than a
bounded amount of memory, never a hang.

CI runs a fixed, derandomised set of examples. ``RSNA_FUZZ_EXAMPLES=20000 pytest
tests/data/test_dicom_fuzz.py`` runs a long, random campaign.
"""

from __future__ import annotations

import functools
import shutil
import signal
import struct
import tempfile
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness import ENCODINGS, encode, fuzz_settings, ramp_hu, reference, replace_value, write_slice
from rsna.data.dicom import DicomError, quiet_rsna_uids, read_hu
from rsna.data.elements import (
    MAX_INFLATED_BYTES,
    NATIVE_SYNTAXES,
    PIXEL_DATA,
    UNDEFINED,
    Syntax,
    Walker,
    read_meta,
)

FUZZ = fuzz_settings(60)
#: A read must finish within this many seconds: a hang guard (reads take milliseconds).
HANG_SECONDS = 10
#: Peak memory of one read, beyond the file itself and a float32 HU image.
MEMORY_SLACK = 16 * 1024 * 1024
NUMBERS = [b"inf", b"-inf", b"nan", b"1e999", b"1e39", b"99999999999999999999", b"", b"-0", b"abc", b"1.5", b"-2147483649"]  # fmt: skip
SYNTAXES = [*ENCODINGS.values(), "1.2.840.10008.1.2.4.50", "1.2.3.4", "", "1.2.840.10008.1.2.1.99\x00"]  # fmt: skip


@functools.cache
def seeds() -> dict[str, bytes]:
    """Valid slices (16x16, 12-bit signed with a bad-intercept twin) in five encodings.

    A cached helper, not a fixture: hypothesis would print a fixture's value, all of
    its bytes, in every report."""
    import pydicom

    folder = Path(tempfile.mkdtemp(prefix="rsna-fuzz-seeds-"))
    out = {}
    for name in ENCODINGS:
        for group, bad in (("s12", False), ("u12", True)):
            src = write_slice(folder / f"src-{group}.dcm", ramp_hu(16, 16, high=1000), group=group, bad_intercept=bad)  # fmt: skip
            with quiet_rsna_uids():
                ds = pydicom.dcmread(src)
            out[f"{name}, {group}"] = encode(ds, folder / f"{name}-{group}.dcm", name).read_bytes()
    shutil.rmtree(folder)
    return out


def element_headers(data: bytes) -> list[tuple[int, int, bytes]]:
    """(position, tag, VR) of each top-level element header of a valid file."""
    ts, start = read_meta(data)
    if ts not in NATIVE_SYNTAXES or ts == "1.2.840.10008.1.2.1.99":
        syntax, dataset = Syntax(explicit=True, little=True), data  # encapsulated
    else:
        syntax, dataset = NATIVE_SYNTAXES[ts], data
    walker = Walker(dataset, syntax, complete=True)
    heads, pos = [], start
    for element in walker.elements(start, len(dataset)):
        long = element.offset - pos == 12
        heads.append((pos, element.tag, element.vr, long))
        pos = element.offset if element.length == UNDEFINED else element.end
        if element.tag == PIXEL_DATA:
            break
    return heads


def check(path: Path) -> str:
    """Read `path` under the hang guard and the memory bound; compare with pydicom."""

    def hang(signum, frame):
        raise AssertionError(f"a read took more than {HANG_SECONDS} s")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(HANG_SECONDS)
    tracemalloc.start()
    got = None
    try:
        got = read_hu(path)
    except DicomError:
        pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    size = path.stat().st_size
    bound = 4 * size + MAX_INFLATED_BYTES + MEMORY_SLACK
    assert peak <= bound, f"peak {peak} bytes for a {size}-byte file"
    if got is None:
        return "refused"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = reference(path)
    assert not isinstance(expected, str), f"read a file pydicom does not: {expected}"
    np.testing.assert_array_equal(got, expected)
    return "image"


def mutate_length(data: bytes, head: tuple[int, int, bytes, bool], value: int) -> bytes:
    pos, _, vr, long = head
    if long:
        return data[: pos + 8] + struct.pack("<I", value & 0xFFFFFFFF) + data[pos + 12 :]
    offset = pos + 6 if vr else pos + 4
    width = 2 if vr else 4
    return data[:offset] + value.to_bytes(8, "little")[:width] + data[offset + width :]


@FUZZ
@given(st.data())
def test_truncated_at_any_length(tmp_path, data):
    name = data.draw(st.sampled_from(sorted(seeds())))
    raw = seeds()[name]
    cut = data.draw(st.integers(0, len(raw)))
    check(write(tmp_path, raw[:cut]))


@FUZZ
@given(st.data())
def test_length_fields_and_vrs(tmp_path, data):
    name = data.draw(st.sampled_from([n for n in sorted(seeds()) if not n.startswith("deflated")]))
    raw = seeds()[name]
    head = data.draw(st.sampled_from(element_headers(raw)))
    if data.draw(st.booleans()) and head[2]:
        vr = data.draw(st.binary(min_size=2, max_size=2) | st.sampled_from([b"SQ", b"UN", b"OB", b"US", b"ZZ"]))  # fmt: skip
        mutated = raw[: head[0] + 4] + vr + raw[head[0] + 6 :]
    else:
        value = data.draw(st.sampled_from([0, 1, 2, 7, 0xFFFF, UNDEFINED, 2**31]) | st.integers(0, 2**32 - 1))  # fmt: skip
        mutated = mutate_length(raw, head, value)
    check(write(tmp_path, mutated))


@FUZZ
@given(st.data())
def test_numeric_strings_dimensions_and_syntax(tmp_path, data):
    name = data.draw(st.sampled_from([n for n in sorted(seeds()) if n.startswith("explicit")]))
    raw = seeds()[name]
    target = data.draw(st.sampled_from(["IS", "DS", "US", "TS"]))
    if target == "TS":
        uid = data.draw(st.sampled_from(SYNTAXES)).encode()
        mutated = replace_value(raw, 0x0002, 0x0010, b"UI", uid + b"\x00" * (len(uid) % 2))
    elif target == "US":
        tag = data.draw(st.sampled_from([0x0010, 0x0011, 0x0100, 0x0101, 0x0103, 0x0002]))
        value = data.draw(st.sampled_from([0, 1, 8, 12, 15, 16, 17, 32, 4097, 65535]))
        mutated = replace_value(raw, 0x0028, tag, b"US", struct.pack("<H", value))
    else:
        tags = {"IS": [(0x0020, 0x0013)], "DS": [(0x0028, 0x1052), (0x0028, 0x1053), (0x0020, 0x0032)]}  # fmt: skip
        group, number = data.draw(st.sampled_from(tags[target]))
        text = data.draw(st.sampled_from(NUMBERS) | st.binary(max_size=24))
        mutated = replace_value(raw, group, number, target.encode(), text + b" " * (len(text) % 2))
    check(write(tmp_path, mutated))


@FUZZ
@given(st.data())
def test_random_bytes(tmp_path, data):
    raw = bytearray(seeds()[data.draw(st.sampled_from(sorted(seeds())))])
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    check(write(tmp_path, bytes(raw)))


def deflated_file(tmp_path: Path, body: bytes) -> Path:
    """A valid file meta information saying "deflated", then `body` deflated."""
    import zlib

    seed = write_slice(tmp_path / "s.dcm", ramp_hu()).read_bytes()
    head = seed[: seed.index(b"1.2.840.10008.1.2.1") + 20]
    head = replace_value(head, 0x0002, 0x0010, b"UI", b"1.2.840.10008.1.2.1.99\x00")
    squeeze = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return write(tmp_path, head + squeeze.compress(body) + squeeze.flush())


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        # The red team's bomb: zeros that pydicom reads as millions of empty elements.
        (bytes(48 * 1024 * 1024), "invalid VR"),
        # Millions of valid, empty private elements: the element bound stops them.
        (struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 0) * (6 * 1024 * 1024), "MAX_ELEMENTS"),
        # More than the inflated-size bound.
        (bytes(80 * 1024 * 1024), "MAX_INFLATED_BYTES"),
    ],
    ids=["zeros", "empty elements", "too large"],
)
def test_deflate_bombs_are_refused_within_bounds(tmp_path, body, reason):
    path = deflated_file(tmp_path, body)
    assert path.stat().st_size < 200_000
    with pytest.raises(DicomError, match=reason):
        read_hu(path)
    assert check(path) == "refused"  # under the hang guard and the memory bound


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """A reader that returned a wrong image would be caught."""
    from rsna.data import dicom

    path = write(tmp_path, seeds()["explicit LE, s12"])
    assert check(path) == "image"
    monkeypatch.setattr(dicom, "correct_unused_bits", lambda pixels, *, bits_stored: pixels + 1)
    with pytest.raises(AssertionError):
        check(path)


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "fuzz.dcm"
    path.write_bytes(data)
    return path
