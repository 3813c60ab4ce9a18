"""
Unit tests for L{sseserver.framing.LineSplitter} (SPEC §5.1): line splitting, the
64 KiB limit, skipping over-long lines, and bounded memory.
"""

from __future__ import annotations

from sseserver.framing import LineSplitter, TooLong

LIMIT = 65536


def normalised(items: list) -> list:
    """Lines as bytes, over-long lines as ("TooLong", size)."""
    return [("TooLong", i.size) if isinstance(i, TooLong) else i for i in items]


def feed_pieces(splitter: LineSplitter, data: bytes, size: int) -> list:
    out = []
    for start in range(0, len(data), size):
        out += splitter.feed(data[start : start + size])
    return out


def pending_bytes(splitter: LineSplitter) -> int:
    return sum(len(p) for p in splitter._pending)


class TestSplitting:
    def test_lf(self):
        assert LineSplitter().feed(b"a\nbb\nccc\n") == [b"a", b"bb", b"ccc"]

    def test_crlf(self):
        assert LineSplitter().feed(b"a\r\nbb\r\n") == [b"a", b"bb"]

    def test_mixed(self):
        assert LineSplitter().feed(b"a\r\nb\nc\r\n") == [b"a", b"b", b"c"]

    def test_only_one_trailing_cr_dropped(self):
        assert LineSplitter().feed(b"a\r\r\nb\r\r\r\n") == [b"a\r", b"b\r\r"]

    def test_inner_cr_kept(self):
        assert LineSplitter().feed(b"a\rb\r\n\rc\n") == [b"a\rb", b"\rc"]

    def test_empty_lines(self):
        assert LineSplitter().feed(b"a\n\nb\n\r\n") == [b"a", b"", b"b", b""]

    def test_incomplete_line_held(self):
        splitter = LineSplitter()
        assert splitter.feed(b"abc") == []
        assert splitter.feed(b"def") == []
        assert splitter.feed(b"\nx") == [b"abcdef"]
        assert splitter.feed(b"y\n") == [b"xy"]

    def test_byte_by_byte(self):
        data = b"color/q1 = go\r\nroom*=hi\n\nlast\r\n"
        splitter = LineSplitter()
        out = []
        for i in range(len(data)):
            out += splitter.feed(data[i : i + 1])
        assert out == [b"color/q1 = go", b"room*=hi", b"", b"last"]
        assert splitter.close() == []

    def test_cr_and_lf_in_separate_feeds(self):
        splitter = LineSplitter()
        assert splitter.feed(b"abc\r") == []
        assert splitter.feed(b"\n") == [b"abc"]

    def test_empty_feed(self):
        splitter = LineSplitter()
        assert splitter.feed(b"") == []
        assert splitter.feed(b"a") == []
        assert splitter.feed(b"") == []
        assert splitter.feed(b"\n") == [b"a"]

    def test_thousand_lines_in_one_feed(self):
        lines = [b"ch%d=message number %d" % (i, i) for i in range(1000)]
        assert LineSplitter().feed(b"\n".join(lines) + b"\n") == lines

    def test_thousand_lines_split_at_odd_places(self):
        lines = [b"ch%d=message number %d" % (i, i) for i in range(1000)]
        data = b"\r\n".join(lines) + b"\r\n"
        assert feed_pieces(LineSplitter(), data, 7) == lines

    def test_binary_bytes_pass_through(self):
        line = bytes(b for b in range(256) if b not in (10, 13))
        assert LineSplitter().feed(line + b"\n") == [line]


class TestClose:
    def test_unterminated_last_line(self):
        splitter = LineSplitter()
        assert splitter.feed(b"a=1\ntoken=message") == [b"a=1"]
        assert splitter.close() == [b"token=message"]

    def test_unterminated_in_pieces(self):
        splitter = LineSplitter()
        assert splitter.feed(b"tok") == []
        assert splitter.feed(b"en=msg") == []
        assert splitter.close() == [b"token=msg"]

    def test_trailing_cr_dropped_on_close(self):
        splitter = LineSplitter()
        splitter.feed(b"abc\r")
        assert splitter.close() == [b"abc"]

    def test_nothing_pending(self):
        splitter = LineSplitter()
        assert splitter.close() == []
        assert splitter.feed(b"a\n") == [b"a"]
        assert splitter.close() == []

    def test_close_resets(self):
        splitter = LineSplitter()
        splitter.feed(b"abc")
        assert splitter.close() == [b"abc"]
        assert splitter.close() == []
        assert splitter.feed(b"x\n") == [b"x"]

    def test_unterminated_65536_passes_65537_too_long(self):
        splitter = LineSplitter()
        splitter.feed(b"x" * 65536)
        assert splitter.close() == [b"x" * 65536]
        splitter.feed(b"x" * 65537)
        assert normalised(splitter.close()) == [("TooLong", 65537)]

    def test_unterminated_far_too_long(self):
        splitter = LineSplitter()
        feed_pieces(splitter, b"y" * 200000, 1000)
        assert normalised(splitter.close()) == [("TooLong", 200000)]
        assert splitter.feed(b"ok\n") == [b"ok"]


class TestLimit:
    def test_default_limit(self):
        assert LineSplitter().limit == LIMIT

    def test_65536_passes(self):
        line = b"a=" + b"x" * (LIMIT - 2)
        assert LineSplitter().feed(line + b"\n") == [line]
        assert LineSplitter().feed(line + b"\r\n") == [line]

    def test_65537_too_long_and_following_lines_come_out(self):
        splitter = LineSplitter()
        out = splitter.feed(b"first\n" + b"x" * 65537 + b"\nnext\r\nafter\n")
        assert normalised(out) == [b"first", ("TooLong", 65537), b"next", b"after"]

    def test_65537_with_crlf_too_long(self):
        out = LineSplitter().feed(b"x" * 65537 + b"\r\nnext\n")
        assert normalised(out) == [("TooLong", 65537), b"next"]

    def test_65536_plus_cr_in_single_bytes_passes(self):
        # The limit+1-th byte may be the CR of CR LF: it must not trigger skipping.
        splitter = LineSplitter()
        data = b"z" * LIMIT + b"\r"
        out = feed_pieces(splitter, data, 1)
        assert out == []
        assert splitter.feed(b"\nnext\n") == [b"z" * LIMIT, b"next"]

    def test_65537_in_single_bytes_too_long(self):
        splitter = LineSplitter()
        out = feed_pieces(splitter, b"z" * (LIMIT + 1) + b"\n" + b"next\n", 1)
        assert normalised(out) == [("TooLong", LIMIT + 1), b"next"]

    def test_over_long_line_in_many_small_pieces(self):
        splitter = LineSplitter()
        data = b"a=1\n" + b"q" * 70000 + b"\n" + b"b=2\n"
        out = feed_pieces(splitter, data, 100)
        assert normalised(out) == [b"a=1", ("TooLong", 70000), b"b=2"]
        assert splitter.close() == []

    def test_over_long_then_more_in_same_feed(self):
        splitter = LineSplitter()
        assert splitter.feed(b"w" * 40000) == []
        assert splitter.feed(b"w" * 40000) == []
        out = splitter.feed(b"w" * 10 + b"\nok1\nok2\npart")
        assert normalised(out) == [("TooLong", 80010), b"ok1", b"ok2"]
        assert splitter.close() == [b"part"]

    def test_two_over_long_lines_in_a_row(self):
        splitter = LineSplitter()
        data = b"a" * 100000 + b"\n" + b"b" * 100000 + b"\nc\n"
        out = feed_pieces(splitter, data, 4096)
        assert normalised(out) == [("TooLong", 100000), ("TooLong", 100000), b"c"]

    def test_custom_limit(self):
        splitter = LineSplitter(limit=4)
        out = splitter.feed(b"abcd\nabcde\nab\r\nabcd\r\n")
        assert normalised(out) == [b"abcd", ("TooLong", 5), b"ab", b"abcd"]


class TestMemoryBound:
    def test_ten_megabytes_without_newline(self):
        splitter = LineSplitter()
        piece = b"m" * 65536
        total = 0
        for _ in range(160):
            assert splitter.feed(piece) == []
            total += len(piece)
            assert pending_bytes(splitter) <= LIMIT + 1
            assert splitter._pending_size == pending_bytes(splitter)
        assert total == 10 * 1024 * 1024
        assert pending_bytes(splitter) == 0
        out = splitter.feed(b"tail\nnext line\n")
        assert normalised(out) == [("TooLong", total + 4), b"next line"]
        assert pending_bytes(splitter) == 0

    def test_pending_bounded_with_small_pieces(self):
        splitter = LineSplitter()
        peak = 0
        for _ in range(2000):
            splitter.feed(b"n" * 100)
            peak = max(peak, pending_bytes(splitter))
        # Up to the limit it may still be a valid line; beyond limit+1 it is dropped.
        assert LIMIT - 100 < peak <= LIMIT + 1
        assert normalised(splitter.feed(b"\n")) == [("TooLong", 200000)]
