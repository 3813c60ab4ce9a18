"""A first end-to-end check that the harness and the server agree."""

from conftest import Stream, assert_events


def test_publish_on_control_reaches_subscriber(start_server):
    server = start_server()
    stream = Stream(server.port, "/sse/room1")
    server.control(b"room1=hello\n")
    assert_events(stream.read_events(1), [(b"hello", None)])
