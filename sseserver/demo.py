"""
The demo page served at C{/}: one self-contained page (script and style
inline, nothing loaded from elsewhere) that subscribes with the browser's own
C{EventSource} and publishes with a form POST (SPEC §5.5) when the server runs
with C{--http-publish}.
"""

from html import escape

_PAGE = """<!DOCTYPE html>
<html lang="en" data-prefix="__PREFIX__">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>sseserver demo</title>
<style>
body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em auto; max-width: 46em;
       padding: 0 1em; }
fieldset { border: 1px solid #ccc; margin: 0 0 1em; }
label { display: inline-block; margin: .2em 1em .2em 0; }
textarea { vertical-align: top; }
#events { font-family: monospace; white-space: pre-wrap; border: 1px solid #ccc;
          padding: .5em; min-height: 10em; }
#events div { padding-left: 2em; text-indent: -2em; }
#reply { font-family: monospace; white-space: pre-wrap; }
#reply.error, #hint { color: #a40000; }
</style>
</head>
<body>
<h1>sseserver demo</h1>
<p>Subscribe to channels (separated by <code>/</code>, empty for all channels)
and the event types to show, then publish below or on the control port, e.g.
<code>echo "demo = hello" | nc 127.0.0.1 8085</code>.</p>
<form id="form">
  <fieldset><legend>Subscribe</legend>
  <label>Channels <input id="channels" value="demo"></label>
  <label>Event types <input id="types" value="message"></label>
  <button>Subscribe</button>
  </fieldset>
</form>
<form id="publish">
  <fieldset><legend>Publish (needs <code>--http-publish</code>)</legend>
  <label>Channel <input id="pub-channel" value="demo"></label>
  <label>Event type <input id="pub-event" placeholder="message"></label>
  <label>Token <input id="pub-token" type="password" size="12"
                      placeholder="if required"></label><br>
  <label>Data <textarea id="pub-data" rows="2" cols="40"></textarea></label>
  <button>Publish</button>
  <div id="reply"></div>
  <div id="hint" hidden></div>
  </fieldset>
</form>
<p id="state">not connected</p>
<div id="events"></div>
<script>
"use strict";
var source = null;
var prefix = document.documentElement.dataset.prefix;
var types = [];
var MAX_SHOWN = 200;
function byId(id) { return document.getElementById(id); }
function path(channels) {
  return channels.split("/").filter(Boolean).map(encodeURIComponent).join("/");
}
function show(text) {
  var events = byId("events");
  var line = document.createElement("div");
  line.textContent = text;
  events.prepend(line);
  while (events.children.length > MAX_SHOWN) { events.lastElementChild.remove(); }
}
function showEvent(e) { show("[" + e.lastEventId + "] " + e.type + ": " + e.data); }
function listen(type) {
  if (types.indexOf(type) >= 0) { return; }
  types.push(type);
  byId("types").value = types.join(" ");
  if (source) { source.addEventListener(type, showEvent); }
}
function subscribe(channels, wanted) {
  if (source) { source.close(); }
  var where = path(channels);
  source = new EventSource(prefix + (where ? "/" + where : ""));
  source.onopen = function () {
    byId("state").textContent = "connected to " + (where || "all channels");
  };
  source.onerror = function () {
    byId("state").textContent = source.readyState === EventSource.CLOSED
      ? "closed" : "reconnecting...";
  };
  source.addEventListener("sseserver-gap", function (e) {
    show("(events were missed; the oldest the server still has is " + e.data + ")");
  });
  types = [];
  wanted.split(/[\\s,]+/).filter(Boolean).forEach(listen);
}
function reply(status, text) {
  var out = byId("reply");
  var hint = byId("hint");
  out.textContent = status + " " + text.trim();
  out.dataset.status = status;
  out.className = status === 200 ? "" : "error";
  hint.hidden = status !== 403 && status !== 401;
  hint.textContent = status === 403
    ? "Publishing over HTTP is off: start sseserver with --http-publish, "
      + "or publish on the control port."
    : status === 401 ? "This server needs its --publish-token: type it in Token." : "";
}
function publish() {
  var where = path(byId("pub-channel").value);
  var type = byId("pub-event").value.trim();
  var body = new URLSearchParams();
  if (type) { body.append("event", type); }
  body.append("data", byId("pub-data").value);
  var headers = {"Content-Type": "application/x-www-form-urlencoded"};
  var token = byId("pub-token").value;
  if (token) { headers.Authorization = "Bearer " + token; }
  listen(type || "message");
  byId("reply").textContent = "publishing...";
  delete byId("reply").dataset.status;
  return fetch(prefix + (where ? "/" + where : ""), {
    method: "POST", headers: headers, body: body.toString()
  }).then(function (response) {
    return response.text().then(function (text) { reply(response.status, text); });
  }, function (error) {
    reply(0, "request failed: " + error);
  });
}
byId("form").addEventListener("submit", function (e) {
  e.preventDefault();
  subscribe(byId("channels").value, byId("types").value);
});
byId("publish").addEventListener("submit", function (e) {
  e.preventDefault();
  publish();
});
subscribe(byId("channels").value, byId("types").value);
</script>
</body>
</html>
"""


def demo_page(prefix: str) -> bytes:
    """The page, subscribing and publishing under C{prefix}."""
    return _PAGE.replace("__PREFIX__", escape(prefix)).encode("utf-8")
