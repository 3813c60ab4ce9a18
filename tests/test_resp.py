"""
Unit tests for L{sseserver.resp}: the RESP2 command encoding, the incremental
reply parser, the pipelining protocol (on a StringTransport) and C{redis://} URLs.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import endpoints, protocol, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.python.failure import Failure

from sseserver import resp
from sseserver.resp import (
    RedisAddress,
    RedisError,
    RedisProtocol,
    ReplyParser,
    encode_command,
    parse_redis_url,
)

# --- helpers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Err:
    """An error reply, comparable by its text (exceptions compare by identity)."""

    text: str


def plain(reply):
    """A reply with every RedisError as an L{Err}, so that replies compare."""
    if isinstance(reply, RedisError):
        return Err(str(reply))
    if isinstance(reply, list):
        return [plain(item) for item in reply]
    return reply


def feed_split(data: bytes, cut: int) -> list:
    """The replies of C{data} fed in two pieces, cut at byte C{cut}."""
    parser = ReplyParser()
    return parser.feed(data[:cut]) + parser.feed(data[cut:])


def outcome(deferred):
    """What a fired Deferred holds (a result or a Failure), consuming it."""
    results = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def failure_of(deferred) -> Failure:
    result = outcome(deferred)
    assert isinstance(result, Failure), result
    return result


def connected(clock=None):
    """A RedisProtocol connected to a StringTransport."""
    redis = RedisProtocol(clock)
    transport = StringTransport()
    redis.makeConnection(transport)
    return redis, transport


# --- encode_command ------------------------------------------------------------------


def test_encode_str_args():
    assert encode_command("GET", "key") == b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n"


def test_encode_bytes_args_verbatim():
    assert (
        encode_command(b"SET", b"k", b"\x00\r\n\xff")
        == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\n\x00\r\n\xff\r\n"
    )


def test_encode_int_args_as_decimal():
    assert (
        encode_command("XREAD", "COUNT", 500, -1, 0)
        == b"*5\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$3\r\n500\r\n$2\r\n-1\r\n$1\r\n0\r\n"
    )


def test_encode_multibyte_utf8_counts_bytes_not_characters():
    assert encode_command("é€") == b"*1\r\n$5\r\n\xc3\xa9\xe2\x82\xac\r\n"


def test_encode_empty_arg():
    assert encode_command("SET", "k", "") == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n"


def test_encode_no_args():
    assert encode_command() == b"*0\r\n"


# --- ReplyParser: each kind of reply --------------------------------------------------


XREAD_REPLY = (
    b"*1\r\n*2\r\n$6\r\nstream\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
)

#: (encoded reply, the reply parsed, with errors as Err)
SAMPLES = [
    (b"+OK\r\n", "OK"),
    (b"+\r\n", ""),
    (b"+caf\xc3\xa9\r\n", "café"),
    (b"-ERR unknown command 'FOO'\r\n", Err("ERR unknown command 'FOO'")),
    (b":42\r\n", 42),
    (b":-7\r\n", -7),
    (b":0\r\n", 0),
    (b"$5\r\nhello\r\n", b"hello"),
    (b"$0\r\n\r\n", b""),
    (b"$6\r\na\r\nb\x00\xff\r\n", b"a\r\nb\x00\xff"),
    (b"$-1\r\n", None),
    (b"*-1\r\n", None),
    (b"*0\r\n", []),
    (
        b"*5\r\n+OK\r\n:1\r\n$-1\r\n-ERR x\r\n$1\r\na\r\n",
        ["OK", 1, None, Err("ERR x"), b"a"],
    ),
    (XREAD_REPLY, [[b"stream", [[b"1-0", [b"f", b"v"]]]]]),
]
SAMPLE_IDS = [encoded.decode("latin-1") for encoded, _ in SAMPLES]


@pytest.mark.parametrize(("encoded", "expected"), SAMPLES, ids=SAMPLE_IDS)
def test_parse_whole_reply(encoded, expected):
    assert plain(ReplyParser().feed(encoded)) == [expected]


def test_simple_string_is_str_and_bulk_is_bytes():
    assert [type(r) for r in ReplyParser().feed(b"+a\r\n$1\r\na\r\n")] == [str, bytes]


def test_error_reply_is_returned_as_redis_error_instance():
    [reply] = ReplyParser().feed(b"-WRONGTYPE wrong kind of value\r\n")
    assert isinstance(reply, RedisError)
    assert str(reply) == "WRONGTYPE wrong kind of value"


def test_several_replies_in_one_feed():
    replies = ReplyParser().feed(b"+OK\r\n:1\r\n$1\r\na\r\n$-1\r\n")
    assert replies == ["OK", 1, b"a", None]


def test_incomplete_reply_waits_for_the_rest():
    parser = ReplyParser()
    assert parser.feed(b"+O") == []
    assert parser.feed(b"K\r") == []
    assert parser.feed(b"\n:1") == ["OK"]
    assert parser.feed(b"\r\n") == [1]


def test_bulk_waits_for_its_declared_length():
    parser = ReplyParser()
    assert parser.feed(b"$4\r\na\r\n") == []
    assert parser.feed(b"b\r\n") == [b"a\r\nb"]


# --- ReplyParser: split anywhere ------------------------------------------------------


@pytest.mark.parametrize(("encoded", "expected"), SAMPLES, ids=SAMPLE_IDS)
def test_one_byte_at_a_time_completes_only_on_the_last_byte(encoded, expected):
    parser = ReplyParser()
    before_last = [parser.feed(encoded[i : i + 1]) for i in range(len(encoded) - 1)]
    assert before_last == [[]] * (len(encoded) - 1)
    assert plain(parser.feed(encoded[-1:])) == [expected]


@pytest.mark.parametrize(("encoded", "expected"), SAMPLES, ids=SAMPLE_IDS)
def test_split_at_every_boundary(encoded, expected):
    for cut in range(len(encoded) + 1):
        assert plain(feed_split(encoded, cut)) == [expected], cut


def test_split_at_every_boundary_of_several_replies():
    encoded = b"".join(e for e, _ in SAMPLES)
    expected = [value for _, value in SAMPLES]
    for cut in range(len(encoded) + 1):
        assert plain(feed_split(encoded, cut)) == expected, cut


LINE_TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\r\n"))


def _arrays(children):
    def encode(items):
        encoded = b"*%d\r\n" % len(items) + b"".join(e for e, _ in items)
        return encoded, [value for _, value in items]

    return st.lists(children, max_size=4).map(encode)


#: (encoded reply, the reply parsed, with errors as Err), nested arbitrarily.
REPLIES = st.recursive(
    st.one_of(
        LINE_TEXT.map(lambda t: (b"+%s\r\n" % t.encode(), t)),
        LINE_TEXT.map(lambda t: (b"-%s\r\n" % t.encode(), Err(t))),
        st.integers().map(lambda n: (b":%d\r\n" % n, n)),
        st.binary().map(lambda b: (b"$%d\r\n%s\r\n" % (len(b), b), b)),
        st.sampled_from([(b"$-1\r\n", None), (b"*-1\r\n", None)]),
    ),
    _arrays,
    max_leaves=20,
)


@given(st.lists(REPLIES, max_size=5), st.data())
def test_any_split_of_concatenated_replies_yields_the_same_replies(replies, data):
    stream = b"".join(encoded for encoded, _ in replies)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    parser = ReplyParser()
    got = []
    for start, end in zip([0, *cuts], [*cuts, len(stream)]):
        got += parser.feed(stream[start:end])
    assert plain(got) == [value for _, value in replies]


# --- ReplyParser: malformed input -----------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"?what\r\n", "unknown reply type"),
        (b"OK\r\n", "unknown reply type"),
        (b"\r\n", "empty reply line"),
        (b":12x\r\n", "not an integer"),
        (b":\r\n", "not an integer"),
        (b"$abc\r\n", "not an integer"),
        (b"*x\r\n", "not an integer"),
        (b"$3\r\nabcde\r\n", "bulk string without its CR LF"),
        (b"*2\r\n+OK\r\n!\r\n", "unknown reply type"),
        (b"+OK\r\n?\r\n", "unknown reply type"),
    ],
)
def test_malformed_input_raises_protocol_error(data, reason):
    with pytest.raises(resp.ProtocolError, match=reason):
        ReplyParser().feed(data)


def test_malformed_line_raises_once_complete():
    parser = ReplyParser()
    assert parser.feed(b"?") == []
    with pytest.raises(resp.ProtocolError):
        parser.feed(b"\r\n")


# --- RedisProtocol --------------------------------------------------------------------


def test_execute_writes_the_encoded_command():
    redis, transport = connected()
    redis.execute("SET", "k", 1)
    assert transport.value() == b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n1\r\n"


def test_pipelined_commands_are_sent_before_any_reply():
    redis, transport = connected()
    first, second = redis.execute("PING"), redis.execute("GET", "a")
    assert transport.value() == b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\na\r\n"
    assert (first.called, second.called) == (False, False)


def test_pipelined_replies_fire_the_deferreds_in_order():
    redis, _ = connected()
    first, second, third = (redis.execute("X") for _ in range(3))
    redis.dataReceived(b"$1\r\nx\r\n:5\r\n*1\r\n$-1\r\n")
    assert [outcome(d) for d in (first, second, third)] == [b"x", 5, [None]]


def test_reply_split_over_reads_fires_once_complete():
    redis, _ = connected()
    waiter = redis.execute("GET", "k")
    redis.dataReceived(b"$2\r\nv")
    assert not waiter.called
    redis.dataReceived(b"v\r\n")
    assert outcome(waiter) == b"vv"


def test_error_reply_errbacks_with_redis_error():
    redis, _ = connected()
    waiter = redis.execute("INCR", "text")
    redis.dataReceived(b"-ERR value is not an integer\r\n")
    failure = failure_of(waiter)
    assert failure.check(RedisError)
    assert str(failure.value) == "ERR value is not an integer"


def test_error_reply_fails_only_its_own_command():
    redis, transport = connected()
    failing, next_one = redis.execute("BAD"), redis.execute("PING")
    redis.dataReceived(b"-ERR no\r\n+PONG\r\n")
    assert failure_of(failing).check(RedisError)
    assert outcome(next_one) == "PONG"
    assert not transport.disconnecting


def test_connection_lost_fails_every_waiting_command():
    redis, _ = connected()
    first, second = redis.execute("A"), redis.execute("B")
    redis.connectionLost(Failure(ConnectionDone("bye")))
    assert failure_of(first).check(ConnectionDone)
    assert failure_of(second).check(ConnectionDone)
    assert list(redis.waiting) == []


def test_connection_lost_fires_lost_with_the_reason():
    redis, _ = connected()
    reason = Failure(ConnectionDone("bye"))
    redis.connectionLost(reason)
    assert outcome(redis.lost) is None
    assert redis.lost_reason is reason
    assert redis.connected is False


def test_execute_before_connection_fails():
    failure = failure_of(RedisProtocol().execute("PING"))
    assert failure.check(ConnectionLost)


def test_execute_after_connection_lost_fails_and_writes_nothing():
    redis, transport = connected()
    redis.connectionLost(Failure(ConnectionDone()))
    assert failure_of(redis.execute("PING")).check(ConnectionLost)
    assert transport.value() == b""
    assert list(redis.waiting) == []


def test_oldest_wait_is_none_when_nothing_waits():
    redis, _ = connected(task.Clock())
    assert redis.oldest_wait() is None


def test_oldest_wait_is_the_send_time_of_the_oldest_unanswered():
    clock = task.Clock()
    redis, _ = connected(clock)
    clock.advance(10)
    redis.execute("A")
    clock.advance(5)
    redis.execute("B")
    clock.advance(100)
    assert redis.oldest_wait() == 10
    redis.dataReceived(b"+OK\r\n")
    assert redis.oldest_wait() == 15
    redis.dataReceived(b"+OK\r\n")
    assert redis.oldest_wait() is None


def test_oldest_wait_without_clock_is_zero():
    redis, _ = connected()
    redis.execute("A")
    assert redis.oldest_wait() == 0.0


def test_garbage_aborts_the_connection_and_fails_the_waiting():
    redis, transport = connected()
    first, second = redis.execute("A"), redis.execute("B")
    redis.dataReceived(b"?garbage\r\n")
    assert (transport.disconnecting, transport.disconnected) == (True, True)
    assert failure_of(first).check(resp.ProtocolError)
    assert failure_of(second).check(resp.ProtocolError)
    assert list(redis.waiting) == []


def test_garbage_after_a_reply_in_an_earlier_read_fails_only_the_rest():
    redis, transport = connected()
    answered, unanswered = redis.execute("A"), redis.execute("B")
    redis.dataReceived(b"+OK\r\n")
    redis.dataReceived(b":x\r\n")
    assert outcome(answered) == "OK"
    assert failure_of(unanswered).check(resp.ProtocolError)
    assert transport.disconnected


def test_replies_before_garbage_in_the_same_read_are_answered():
    redis, transport = connected()
    answered, unanswered = redis.execute("A"), redis.execute("B")
    redis.dataReceived(b"+OK\r\n:x\r\n")
    assert outcome(answered) == "OK"
    assert failure_of(unanswered).check(resp.ProtocolError)
    assert transport.disconnected


def test_deep_nesting_is_parsed_without_recursion():
    depth = 5000
    value = ReplyParser().feed(b"*1\r\n" * depth + b":7\r\n")[0]
    for _ in range(depth):
        (value,) = value
    assert value == 7


def test_a_big_reply_in_small_reads_is_parsed_once():
    """Each read adds to what was parsed: no bulk string is copied twice."""
    entry = b"$65536\r\n" + b"x" * 65536 + b"\r\n"
    data = b"*200\r\n" + entry * 200
    parser = ReplyParser()
    replies = []
    for start in range(0, len(data), 65536):
        replies += parser.feed(data[start : start + 65536])
        assert len(parser._buffer) <= 2 * 65536 + 16
    assert replies == [[b"x" * 65536] * 200]


def test_reply_nobody_waits_for_aborts_the_connection():
    redis, transport = connected()
    redis.dataReceived(b"+OK\r\n")
    assert (transport.disconnecting, transport.disconnected) == (True, True)


def test_lost_fires_after_an_abort_for_garbage():
    redis, _ = connected()
    redis.execute("A").addErrback(lambda failure: None)
    redis.dataReceived(b"!\r\n")
    reason = Failure(ConnectionLost("aborted"))
    redis.connectionLost(reason)
    assert outcome(redis.lost) is None
    assert redis.lost_reason is reason


# --- parse_redis_url ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://cache.example", RedisAddress(host="cache.example")),
        ("redis://cache.example:6380", RedisAddress(host="cache.example", port=6380)),
        ("redis://cache.example/2", RedisAddress(host="cache.example", db=2)),
        ("redis://cache.example:6380/", RedisAddress(host="cache.example", port=6380)),
        (
            "redis://:s3cret@cache.example",
            RedisAddress("cache.example", password="s3cret"),
        ),
        (
            "redis://alice:s3cret@cache.example",
            RedisAddress("cache.example", username="alice", password="s3cret"),
        ),
        (
            "redis://al%20ice:p%40ss%3Aw%2Fd@cache.example:6380/5",
            RedisAddress(
                "cache.example", 6380, 5, username="al ice", password="p@ss:w/d"
            ),
        ),
        ("redis://[::1]:6380", RedisAddress(host="::1", port=6380)),
        ("redis://", RedisAddress()),
        ("unix:///run/redis.sock", RedisAddress(unix="/run/redis.sock")),
        ("unix:///run/redis.sock?db=3", RedisAddress(unix="/run/redis.sock", db=3)),
        (
            "unix://:pw@/run/redis.sock?db=3",
            RedisAddress(unix="/run/redis.sock", db=3, password="pw"),
        ),
    ],
)
def test_parse_redis_url(url, address):
    assert parse_redis_url(url) == address


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://cache.example", "not a redis:// or unix:// URL"),
        ("rediss://cache.example", "not a redis:// or unix:// URL"),
        ("cache.example:6379", "not a redis:// or unix:// URL"),
        ("redis://cache.example:port", "bad port"),
        ("redis://cache.example:70000", "bad port"),
        ("redis://cache.example/one", "not a database number"),
        ("redis://cache.example/-1", "not a database number"),
        ("redis://cache.example/1/2", "not a database number"),
        ("unix:///run/redis.sock?db=x", "not a database number"),
        ("unix://", "needs a socket path"),
        ("redis://alice@h", "a user name needs a password"),
        ("redis://h:0", "bad port"),
    ],
)
def test_parse_redis_url_rejects(url, reason):
    with pytest.raises(ValueError, match=reason):
        parse_redis_url(url)


# --- RedisAddress ---------------------------------------------------------------------


def connect_through(endpoint_string: str) -> MemoryReactor:
    """A MemoryReactor after connecting to Twisted's reading of the endpoint."""
    reactor = MemoryReactor()
    endpoint = endpoints.clientFromString(reactor, endpoint_string)
    endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
    return reactor


def test_endpoint_tcp():
    address = RedisAddress(host="cache.example", port=6380)
    assert address.endpoint() == "tcp:host=cache.example:port=6380:timeout=5"


def test_endpoint_tcp_ipv6_escapes_colons():
    address = RedisAddress(host="::1")
    assert address.endpoint() == r"tcp:host=\:\:1:port=6379:timeout=5"
    host, port = connect_through(address.endpoint()).tcpClients[0][:2]
    assert (host, port) == ("::1", 6379)


def test_endpoint_unix():
    assert (
        RedisAddress(unix="/run/redis.sock").endpoint() == "unix:path=/run/redis.sock"
    )


@pytest.mark.parametrize("path", ["/run/a:b.sock", "/run/a=b.sock", "/run/a\\b.sock"])
def test_endpoint_unix_path_survives_twisted_parsing(path):
    endpoint = RedisAddress(unix=path).endpoint()
    assert connect_through(endpoint).unixClients[0][0] == path


def test_display_hides_user_and_password():
    address = parse_redis_url("redis://alice:s3cret@cache.example:6380/2")
    assert address.display() == "redis://cache.example:6380/2"


def test_display_defaults():
    assert RedisAddress().display() == "redis://127.0.0.1:6379/0"


def test_display_brackets_ipv6():
    assert parse_redis_url("redis://[::1]/1").display() == "redis://[::1]:6379/1"


def test_display_unix_hides_password():
    display = parse_redis_url("unix://:s3cret@/run/redis.sock?db=3").display()
    assert display == "unix:///run/redis.sock?db=3"


@pytest.mark.parametrize(
    ("url", "commands"),
    [
        ("redis://h", []),
        ("redis://h/0", []),
        ("redis://h/3", [("SELECT", 3)]),
        ("redis://:pw@h", [("AUTH", "pw")]),
        ("redis://alice:pw@h", [("AUTH", "alice", "pw")]),
        ("redis://alice:pw@h/4", [("AUTH", "alice", "pw"), ("SELECT", 4)]),
        ("unix://:pw@/run/redis.sock?db=2", [("AUTH", "pw"), ("SELECT", 2)]),
    ],
)
def test_setup_commands(url, commands):
    assert parse_redis_url(url).setup_commands() == commands
