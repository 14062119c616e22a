"""JPEG Lossless encoder: Process 14, first-order prediction (Selection Value 1).

Writes the codestream of transfer syntax 1.2.840.10008.1.2.4.70 (also a valid
1.2.840.10008.1.2.4.57 stream: Process 14 with any predictor) following ITU-T T.81:

- H.1.2.1 prediction: the first sample of the first line is predicted by
  2^(P-1), the rest of the first line by the sample to the left (Ra), the first
  sample of every other line by the one above (Rb), all others by Ra (SV 1);
  differences are taken modulo 2^16;
- H.1.2.2 / Table H.2 and F.1.2.1.1: each difference is coded as the Huffman code of
  its category SSSS followed by SSSS additional bits (negative: the low bits of
  diff - 1); category 16 (difference 32768) has no additional bits;
- K.2 / Annex C: one Huffman table per image, optimal for its categories, code
  lengths limited to 16 and no all-ones code word;
- F.1.2.3 / B.1.1.5: the last byte padded with 1 bits; a 0x00 byte stuffed after
  every 0xFF of entropy-coded data;
- B.2.2 (SOF3), B.2.4.2 (DHT), B.2.3 (SOS: Ss = predictor 1, Se = 0, Ah = Al = 0).

Components are interleaved, one sample of each per MCU (A.2.3, Hi = Vi = 1).
Signed data is coded as its raw Bits Stored bit pattern (PS3.5 8.2.1), so a decoder
gives back the same bits. Pure numpy: prediction, categories and bit packing are
array operations; only the 17-symbol Huffman table is built in Python.
"""

from __future__ import annotations

import heapq
import struct

import numpy as np
import numpy.typing as npt

_SOI, _EOI, _SOF3, _DHT, _SOS = 0xD8, 0xD9, 0xC3, 0xC4, 0xDA
_MAX_CODE_LENGTH = 16
_STRIP_SAMPLES = 1 << 18


def encode(pixels: npt.NDArray[np.integer], precision: int, bits: int | None = None) -> bytes:
    """One frame as a JPEG Lossless SV1 codestream.

    ``pixels`` is (rows, columns) or (rows, columns, components) with 1 or 3
    components; ``precision`` (2..16) is the sample precision P, normally Bits
    Stored. Only the low ``bits`` (default: ``precision``) bits of each value are
    coded: for signed data, its two's complement bit pattern.
    """
    if not 2 <= precision <= 16:
        raise ValueError(f"JPEG lossless sample precision must be 2..16, not {precision}")
    bits = precision if bits is None else min(bits, precision)
    samples = np.asarray(pixels)
    if samples.ndim == 2:
        samples = samples[:, :, np.newaxis]
    if samples.ndim != 3 or samples.shape[2] not in (1, 3):
        raise ValueError(f"expected (rows, columns[, 1 or 3]) pixels, got {samples.shape}")
    rows, columns, components = samples.shape
    if not (0 < rows < 65536 and 0 < columns < 65536):
        raise ValueError(f"JPEG frame size {rows} x {columns} is outside 1..65535")
    # Coded in strips of rows, so temporaries stay near 30 MB however large
    # the frame (a 4k x 4k mammogram is 16 M samples): once to count categories for
    # the Huffman table, once to code them.
    step = max(1, _STRIP_SAMPLES // (columns * components))
    strips = [(top, min(top + step, rows)) for top in range(0, rows, step)]
    frequencies = np.zeros(17, dtype=np.int64)
    for top, bottom in strips:
        found = _differences(samples, top, bottom, precision, bits)
        frequencies += np.bincount(found[0], minlength=17)
    lengths = _code_lengths(frequencies)
    codes, huffval, per_length = _canonical(lengths)
    pieces, carry = [], (0, 0)
    for top, bottom in strips:
        # One strip (most frames): its differences are still at hand.
        categories, extra, extra_bits = (
            found if len(strips) == 1 else _differences(samples, top, bottom, precision, bits)
        )
        # One code word per sample: Huffman code then the additional bits (<= 31 bits).
        words = (codes[categories] << extra_bits) | extra
        piece, carry = _pack(words, lengths[categories] + extra_bits, carry, bottom == rows)
        pieces.append(piece)
    entropy = b"".join(pieces)
    return b"".join(
        (
            _marker(_SOI),
            _segment(
                _SOF3,
                struct.pack(">BHHB", precision, rows, columns, components)
                + b"".join(bytes((c + 1, 0x11, 0)) for c in range(components)),
            ),
            _segment(_DHT, bytes([0x00]) + bytes(per_length) + bytes(huffval)),
            _segment(
                _SOS,
                bytes([components])
                + b"".join(bytes((c + 1, 0x00)) for c in range(components))
                + bytes((1, 0, 0)),
            ),
            entropy,
            _marker(_EOI),
        )
    )


def _differences(
    samples: npt.NDArray[np.integer], top: int, bottom: int, precision: int, bits: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """For rows ``top`` to ``bottom`` (interleaved order): each sample's SSSS category,
    additional bits and their count; values are their low ``bits`` bits."""
    context = 1 if top > 0 else 0  # the row above, for the first column's prediction
    values = samples[top - context : bottom].astype(np.int64) & ((1 << bits) - 1)
    predicted = np.empty_like(values)
    predicted[:, 1:] = values[:, :-1]  # Ra
    predicted[1:, 0] = values[:-1, 0]  # Rb for the first column
    predicted[0, 0] = 1 << (precision - 1)  # first line's first sample (or context)
    diff = ((values - predicted) & 0xFFFF)[context:].ravel()  # modulo 2^16 (H.1.2.1)
    diff = np.where(diff > 0x8000, diff - 0x10000, diff)
    magnitude = np.abs(diff)
    categories = np.frexp(magnitude.astype(np.float64))[1].astype(np.int64)  # bit length
    extra_bits = np.where(categories == 16, 0, categories)
    extra = np.where(diff < 0, diff - 1, diff) & ((np.int64(1) << extra_bits) - 1)
    return categories, extra, extra_bits


def _code_lengths(frequencies: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """Huffman code length of each category (K.2), at most 16 bits, 0 if unused.

    A reserved symbol of frequency 1 is added so no real symbol gets the all-ones code
    word (K.2, Figure K.1); it is dropped again after lengths are limited (Figure K.3).
    """
    symbols = [(int(f), s) for s, f in enumerate(frequencies) if f > 0] + [(1, 17)]
    lengths = dict.fromkeys((s for _, s in symbols), 0)
    heap: list[tuple[int, int, list[int]]] = [(f, s, [s]) for f, s in symbols]
    heapq.heapify(heap)
    tie = 18
    while len(heap) > 1:
        f1, _, members1 = heapq.heappop(heap)
        f2, _, members2 = heapq.heappop(heap)
        for s in members1 + members2:
            lengths[s] += 1
        heapq.heappush(heap, (f1 + f2, tie, members1 + members2))
        tie += 1
    count = [0] * 40
    for length in lengths.values():
        count[length] += 1
    # Figure K.3: move symbols out of lengths over 16, keeping the prefix property.
    for i in range(len(count) - 1, _MAX_CODE_LENGTH, -1):
        while count[i] > 0:
            j = i - 2
            while count[j] == 0:
                j -= 1
            count[i] -= 2
            count[i - 1] += 1
            count[j + 1] += 2
            count[j] -= 1
    # Drop the reserved symbol: it takes one of the longest codes.
    longest = max(i for i in range(_MAX_CODE_LENGTH + 1) if count[i])
    count[longest] -= 1
    # Reassign lengths from the counts: most frequent symbols get the shortest codes.
    order = sorted((s for s in lengths if s != 17), key=lambda s: (-int(frequencies[s]), s))
    result = np.zeros(17, dtype=np.int64)
    position = 0
    for length in range(1, _MAX_CODE_LENGTH + 1):
        for _ in range(count[length]):
            result[order[position]] = length
            position += 1
    return result


def _canonical(
    lengths: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.int64], list[int], list[int]]:
    """Code word per category, HUFFVAL and BITS (Annex C: codes in order of length)."""
    huffval = sorted((s for s in range(17) if lengths[s]), key=lambda s: (lengths[s], s))
    bits = [int(np.count_nonzero(lengths == n)) for n in range(1, _MAX_CODE_LENGTH + 1)]
    codes = np.zeros(17, dtype=np.int64)
    code, current = 0, 1
    for symbol in huffval:
        while current < lengths[symbol]:
            code <<= 1
            current += 1
        codes[symbol] = code
        code += 1
    return codes, huffval, bits


def _pack(
    words: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    carry: tuple[int, int],
    final: bool,
) -> tuple[bytes, tuple[int, int]]:
    """Variable-length code words MSB first, as whole bytes with 0xFF stuffed, after
    ``carry`` (bits left over from the previous strip: value, count). Returns the
    bytes and the new carry; the ``final`` strip is padded with 1 bits instead."""
    words = np.concatenate(([carry[0]], words)).astype(np.uint64)
    lengths = np.concatenate(([carry[1]], lengths)).astype(np.int64)
    total = int(lengths.sum())
    if final and total % 8:
        padding = 8 - total % 8
        words = np.append(words, np.uint64((1 << padding) - 1))
        lengths = np.append(lengths, padding)
        total += padding
    size = (total + 7) // 8
    starts = np.cumsum(lengths) - lengths
    # Output as 32-bit big-endian slots. A word (<= 31 bits) starting at bit 0..31 of
    # its slot lies within that slot and the next: aligned in a 64-bit window, its
    # high half is added to its slot and its low half to the next. Words share no
    # bits, so adding is OR-ing; the sums stay below 2^32, exact in bincount's floats.
    slot = starts >> 5
    window = words << (64 - (starts & 31) - lengths).astype(np.uint64)
    slots = size // 4 + 2
    high = np.bincount(slot, weights=window >> np.uint64(32), minlength=slots)
    low = np.bincount(slot + 1, weights=window & np.uint64(0xFFFFFFFF), minlength=slots)
    packed = np.frombuffer((high[:slots] + low[:slots]).astype(">u4").tobytes()[:size], np.uint8)
    left = total % 8  # bits of an unfinished last byte go to the next strip
    carry = (int(packed[-1]) >> (8 - left), left) if left else (0, 0)
    whole = packed[: total // 8]
    ff = np.flatnonzero(whole == 0xFF)
    if len(ff):
        whole = np.insert(whole, ff + 1, 0)
    return whole.tobytes(), carry


def _marker(code: int) -> bytes:
    return bytes((0xFF, code))


def _segment(code: int, payload: bytes) -> bytes:
    return _marker(code) + struct.pack(">H", len(payload) + 2) + payload
