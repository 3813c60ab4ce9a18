"""The demo page served at C{/}: one self-contained page using EventSource."""

from html import escape

_PAGE = """<!DOCTYPE html>
<html lang="en" data-prefix="__PREFIX__">
<head>
<meta charset="utf-8">
<title>sseserver demo</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 2em auto; max-width: 46em; }
#events { font-family: monospace; white-space: pre-wrap; border: 1px solid #ccc;
          padding: .5em; min-height: 10em; }
</style>
</head>
<body>
<h1>sseserver demo</h1>
<p>Subscribe to channels (separated by <code>/</code>, empty for all channels),
then publish on the control port, e.g.
<code>echo "demo = hello" | nc 127.0.0.1 8085</code>.</p>
<form id="form">
  <label>Channels <input id="channels" value="demo"></label>
  <button>Subscribe</button>
</form>
<p id="state">not connected</p>
<div id="events"></div>
<script>
"use strict";
var source = null;
var prefix = document.documentElement.dataset.prefix;
function show(text) {
  var line = document.createElement("div");
  line.textContent = text;
  document.getElementById("events").prepend(line);
}
function subscribe(channels) {
  if (source) { source.close(); }
  var path = channels.split("/").filter(Boolean).map(encodeURIComponent).join("/");
  source = new EventSource(prefix + (path ? "/" + path : ""));
  source.onopen = function () {
    document.getElementById("state").textContent = "connected to " + (path || "all channels");
  };
  source.onerror = function () {
    document.getElementById("state").textContent = "reconnecting...";
  };
  source.onmessage = function (e) { show("[" + e.lastEventId + "] message: " + e.data); };
}
document.getElementById("form").addEventListener("submit", function (e) {
  e.preventDefault();
  subscribe(document.getElementById("channels").value);
});
subscribe(document.getElementById("channels").value);
</script>
</body>
</html>
"""


def demo_page(prefix: str) -> bytes:
    """The page, subscribing under C{prefix}."""
    return _PAGE.replace("__PREFIX__", escape(prefix)).encode("utf-8")
