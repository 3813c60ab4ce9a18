"""
The deployment files in etc/: checked with the real tools where the machine has
them (systemd-analyze, systemd-socket-activate, start-stop-daemon, sh, nginx),
and parsed and checked key by key everywhere.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import (
    END,
    ROOT,
    TIMEOUT,
    TWISTD,
    ControlClient,
    Stream,
    expect,
    stop_process,
)

from sseserver.tap import Options

ETC = ROOT / "etc"
SERVICE = ETC / "sseserver.service"
SOCKET = ETC / "sseserver.socket"
INIT = ETC / "init.d" / "sseserver"
DEFAULTS = ETC / "default" / "sseserver"
CONFIG = ETC / "sseserver.conf"
LOGROTATE = ETC / "logrotate.d" / "sseserver"
NGINX = ETC / "nginx" / "sseserver.conf"
NODE_SERVICE = ETC / "sseserver@.service"
NODES = [ETC / "cluster" / "node1.conf", ETC / "cluster" / "node2.conf"]
NGINX_CLUSTER = ETC / "nginx" / "sseserver-cluster.conf"
APACHE = ETC / "apache2" / "sseserver.conf"

#: Where the unit and the init script expect twistd (the README's install).
INSTALLED_TWISTD = "/opt/sseserver/venv/bin/twistd"
INSTALLED_CONFIG = "/etc/sseserver/sseserver.conf"


# --- small parsers ---------------------------------------------------------


def unit_entries(path: Path) -> list:
    """A systemd unit as (section, key, value) in file order."""
    entries, section = [], None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            assert line.endswith("]"), line
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and section, line
        entries.append((section, key.strip(), value.strip()))
    return entries


def unit_values(path: Path) -> dict:
    """{(section, key): [values...]}."""
    values: dict = {}
    for section, key, value in unit_entries(path):
        values.setdefault((section, key), []).append(value)
    return values


def config_lines(path: Path) -> list:
    """The option lines of a --config file (what sseserver reads)."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def commented_options(path: Path) -> list:
    """Example option lines that are commented out: '#--name value'."""
    return [
        line[1:] for line in path.read_text().splitlines() if line.startswith("#--")
    ]


def shell_settings(path: Path) -> dict:
    """The variables a shell file sets, as /bin/sh sees them after sourcing it."""
    script = 'set -a; . "$1"; env -0'
    output = subprocess.run(
        ["sh", "-c", script, "sh", str(path)],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
    ).stdout
    before = subprocess.run(
        ["sh", "-c", "env -0"],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
    ).stdout
    parse = lambda raw: dict(
        item.split("=", 1) for item in raw.decode().split("\0") if "=" in item
    )
    base = parse(before)
    return {k: v for k, v in parse(output).items() if base.get(k) != v}


def nginx_tokens(text: str) -> list:
    """nginx config tokens: words, quoted strings, '{', '}', ';'."""
    tokens = []
    pattern = re.compile(r'\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|([{};])|([^\s{};"#]+)')
    position = 0
    while position < len(text):
        match = pattern.match(text, position)
        assert match, text[position : position + 40]
        position = match.end()
        if match[1] is not None:
            tokens.append(("str", match[1]))
        elif match[2]:
            tokens.append(("sym", match[2]))
        elif match[3]:
            tokens.append(("str", match[3]))
    return tokens


def nginx_blocks(text: str) -> list:
    """Parse nginx config into [(args, children or None)]."""
    tokens = nginx_tokens(text)
    index = 0

    def block() -> list:
        nonlocal index
        items, args = [], []
        while index < len(tokens):
            kind, value = tokens[index]
            index += 1
            if kind == "str":
                args.append(value)
            elif value == ";":
                assert args, "empty directive"
                items.append((args, None))
                args = []
            elif value == "{":
                assert args, "block without a name"
                items.append((args, block()))
                args = []
            else:  # "}"
                assert not args, f"unterminated directive {args}"
                return items
        assert not args, f"unterminated directive {args}"
        return items

    parsed = block()
    assert index == len(tokens), "unbalanced '}'"
    return parsed


def nginx_seconds(value: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    match = re.fullmatch(r"(\d+)([smhd]?)", value)
    assert match, value
    return int(match[1]) * units[match[2] or "s"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# --- the default options file -------------------------------------------


def test_default_config_is_accepted_by_sseserver():
    options = Options()
    options.parseOptions(["--config", str(CONFIG)])
    assert options["port"] == ["tcp:8080:interface=127.0.0.1"]
    assert options["control"] == ["tcp:8085:interface=127.0.0.1"]
    assert options["fifo"] == "/run/sseserver/fifo"
    assert options["prefix"] == "/sse"
    assert options["dialect"] == "sse-server"
    assert options["heartbeat"] == 15
    assert options["loglevel"] == "normal"
    # Every active line is one option that sseserver knows, as written.
    for line in config_lines(CONFIG):
        one = Options()
        one.parseOptions(shlex.split(line))


def test_commented_examples_in_config_are_valid_options(tmp_path):
    """Uncommenting any example line gives a valid configuration."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    key_path, cert_path = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    examples = commented_options(CONFIG)
    names = {shlex.split(line)[0].split("=")[0] for line in examples}
    assert {"--port", "--cors-origin", "--http-publish", "--no-demo"} <= names
    checked = 0
    for line in examples:
        if "systemd:" in line:
            # Needs descriptors from systemd: see test_socket_activation.
            continue
        line = line.replace("/etc/sseserver/key.pem", str(key_path))
        line = line.replace("/etc/sseserver/cert.pem", str(cert_path))
        options = Options()
        options.parseOptions(shlex.split(line))
        checked += 1
    assert checked == len(examples) - 1


# --- systemd ------------------------------------------------------------


def test_service_unit_keys():
    values = unit_values(SERVICE)
    expected = {
        ("Service", "Type"): ["simple"],
        ("Service", "User"): ["sseserver"],
        ("Service", "Group"): ["sseserver"],
        ("Service", "Restart"): ["on-failure"],
        ("Service", "RuntimeDirectory"): ["sseserver"],
        ("Service", "LimitNOFILE"): ["65536"],
        ("Service", "NoNewPrivileges"): ["yes"],
        ("Service", "ProtectSystem"): ["strict"],
        ("Service", "ProtectHome"): ["yes"],
        ("Service", "PrivateTmp"): ["yes"],
        ("Service", "PrivateDevices"): ["yes"],
        ("Service", "RestrictAddressFamilies"): ["AF_INET AF_INET6 AF_UNIX"],
        ("Install", "WantedBy"): ["multi-user.target"],
    }
    for key, value in expected.items():
        assert values.get(key) == value, key
    (exec_start,) = values[("Service", "ExecStart")]
    argv = shlex.split(exec_start)
    assert argv == [
        INSTALLED_TWISTD,
        "-n",
        "--pidfile=",
        "--logfile",
        "-",
        "sseserver",
        "--config",
        INSTALLED_CONFIG,
    ]
    # The FIFO of the options file lives in the unit's RuntimeDirectory.
    options = Options()
    options.parseOptions(["--config", str(CONFIG)])
    assert Path(options["fifo"]).parent == Path("/run") / "sseserver"


def test_socket_unit_keys():
    values = unit_values(SOCKET)
    assert values[("Socket", "ListenStream")] == ["0.0.0.0:8080"]
    assert values[("Socket", "Service")] == ["sseserver.service"]
    assert values[("Install", "WantedBy")] == ["sockets.target"]
    # The documented endpoint matches the socket's family (IPv4 address: INET),
    # and the options file proposes the same string.
    documented = re.findall(r"--port (systemd:\S+)", SOCKET.read_text())
    assert documented[0] == "systemd:domain=INET:index=0"
    assert f"#--port {documented[0]}" in CONFIG.read_text().splitlines()


def test_units_pass_systemd_analyze_verify(tmp_path):
    def verify(*units: Path) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["systemd-analyze", "verify", *(f"./{u.name}" for u in units)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    # verify checks that ExecStart= exists: point it at this machine's twistd.
    text = SERVICE.read_text()
    assert text.count(INSTALLED_TWISTD) == 1
    service = tmp_path / "sseserver.service"
    service.write_text(text.replace(INSTALLED_TWISTD, TWISTD))
    socket_unit = tmp_path / "sseserver.socket"
    socket_unit.write_text(SOCKET.read_text())
    result = verify(service, socket_unit)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    # verify reports mistakes on stderr even with status 0: make sure it does
    # here, so that the check above means something.
    broken = tmp_path / "broken.service"
    broken.write_text(
        service.read_text().replace("ProtectSystem=strict", "ProtectSytem=strict")
    )
    result = verify(broken)
    assert "Unknown key 'ProtectSytem'" in result.stderr


class ActivatedServer:
    """sseserver started by systemd-socket-activate on the first connection."""

    def __init__(self, port: int, endpoint: str, workdir: Path):
        self.lines: list = []
        env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen(
            [
                "systemd-socket-activate",
                "--listen",
                f"127.0.0.1:{port}",
                # systemd (227 and later) always names the descriptors, after
                # the socket unit; Twisted ignores unnamed ones.
                "--fdname",
                "sseserver.socket",
                # It passes no environment of its own: run this checkout.
                "--setenv=PYTHONPATH",
                "--setenv=PYTHONUNBUFFERED",
                TWISTD,
                "-n",
                "--pidfile=",
                "sseserver",
                "--port",
                endpoint,
                "--control",
                "tcp:0:interface=127.0.0.1",
                "--admin",
                "none",
                "--heartbeat",
                "0",
            ],
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for raw in self.process.stdout:
            self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def wait_for(self, pattern: str) -> re.Match:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            time.sleep(0.05)
        raise AssertionError(f"no {pattern!r} in:\n" + "\n".join(self.lines))

    def stop(self) -> None:
        stop_process(self.process)


def test_socket_activation(tmp_path):
    """The documented systemd: endpoint serves on a socket systemd passes in."""
    endpoint = re.findall(r"--port (systemd:\S+)", SOCKET.read_text())[0]
    port = free_port()
    server = ActivatedServer(port, endpoint, tmp_path)
    try:
        server.wait_for(rf"Listening on 127\.0\.0\.1:{port} as 3\.")
        # The first connection starts sseserver, which accepts it.
        stream = Stream(port, "/sse/color")
        assert stream.status == 200
        assert server.wait_for(r"\] SSE listening on (\S+)$")[1] == f"127.0.0.1:{port}"
        control = int(server.wait_for(r"\] control listening on \S+:(\d+)$")[1])
        with ControlClient(control) as client:
            client.send(
                b"color = via systemd\ncolor/t = x\n" + b"color = " + END + b"\n"
            )
            client.sock.shutdown(socket.SHUT_WR)
            assert client.sock.recv(100) == b""
        expect(stream, [(b"via systemd", None), (b"x", b"t")])
        stream.close()
    finally:
        server.stop()


# --- init.d ---------------------------------------------------------------


def test_init_script_syntax_and_lsb_header():
    for shell in ("sh", "bash"):
        if shutil.which(shell):
            result = subprocess.run(
                [shell, "-n", str(INIT)], capture_output=True, check=False
            )
            assert (result.returncode, result.stderr) == (0, b""), shell
    text = INIT.read_text()
    assert text.startswith("#!/bin/sh\n")
    assert os.access(INIT, os.X_OK)
    header = re.search(
        r"^### BEGIN INIT INFO\n(.*?)^### END INIT INFO$",
        text,
        re.MULTILINE | re.DOTALL,
    )
    fields = dict(
        re.match(r"# ([A-Za-z-]+):\s+(.*)$", line).groups()
        for line in header[1].splitlines()
        if re.match(r"# [A-Za-z-]+:", line)
    )
    assert fields["Provides"] == "sseserver"
    assert fields["Required-Start"] == "$network $remote_fs $syslog"
    assert fields["Required-Stop"] == "$network $remote_fs $syslog"
    assert fields["Default-Start"] == "2 3 4 5"
    assert fields["Default-Stop"] == "0 1 6"
    assert "DEFAULTS=/etc/default/sseserver\n" in text


def test_defaults_file_matches_init_script_and_logrotate():
    settings = shell_settings(DEFAULTS)
    assert settings == {
        "CONFIG": INSTALLED_CONFIG,
        "SSESERVER_OPTS": "",
        "SSESERVER_USER": "sseserver",
        "SSESERVER_GROUP": "sseserver",
        "RUNDIR": "/run/sseserver",
        "PIDFILE": "/run/sseserver/sseserver.pid",
        "LOGFILE": "/var/log/sseserver/sseserver.log",
        "MAX_FILES": "65536",
        "START_TIMEOUT": "10",
        "STOP_TIMEOUT": "30",
    }
    # The init script's built-in defaults are the same values.
    text = INIT.read_text()
    for key, value in settings.items():
        shown = f'"{value}"' if value == "" else value
        assert f"\n{key}={shown}\n" in text, key
    assert f"\nDAEMON={INSTALLED_TWISTD}\n" in text
    assert f"#DAEMON={INSTALLED_TWISTD}\n" in DEFAULTS.read_text()


@pytest.fixture
def init_script(tmp_path):
    """The init script reading a defaults file in tmp_path; stopped afterwards."""
    import grp
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    group = grp.getgrgid(os.getgid()).gr_name
    run, logs = tmp_path / "run", tmp_path / "log"
    config = tmp_path / "sseserver.conf"
    config.write_text(
        "# test configuration\n"
        "--port tcp:0:interface=127.0.0.1\n"
        "--control tcp:0:interface=127.0.0.1\n"
        "--admin none\n"
        f"--fifo {run}/fifo\n"
    )
    defaults = tmp_path / "default"
    defaults.write_text(
        DEFAULTS.read_text()
        + f"DAEMON={TWISTD}\nCONFIG={config}\nSSESERVER_OPTS='--heartbeat 0'\n"
        f"SSESERVER_USER={user}\nSSESERVER_GROUP={group}\nRUNDIR={run}\n"
        f"PIDFILE={run}/sseserver.pid\nLOGFILE={logs}/sseserver.log\n"
        "MAX_FILES=4096\n"
    )
    text = INIT.read_text()
    assert text.count("DEFAULTS=/etc/default/sseserver\n") == 1
    script = tmp_path / "sseserver.init"
    script.write_text(text.replace("/etc/default/sseserver", str(defaults)))
    env = dict(os.environ, PYTHONPATH=str(ROOT))

    def run_script(action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["sh", str(script), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    run_script.pidfile = run / "sseserver.pid"
    run_script.logfile = logs / "sseserver.log"
    run_script.fifo = run / "fifo"
    yield run_script
    if run_script.pidfile.exists():
        try:
            os.kill(int(run_script.pidfile.read_text()), signal.SIGKILL)
        except (ValueError, ProcessLookupError):
            pass


def log_ports(logfile: Path, since: int = 0) -> tuple:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        text = logfile.read_bytes()[since:].decode("utf-8", "replace")
        sse = re.findall(r"\] SSE listening on 127\.0\.0\.1:(\d+)$", text, re.MULTILINE)
        control = re.findall(
            r"\] control listening on 127\.0\.0\.1:(\d+)$", text, re.MULTILINE
        )
        if sse and control:
            return int(sse[-1]), int(control[-1])
        time.sleep(0.05)
    raise AssertionError(logfile.read_text())


def process_alive(pid: int) -> bool:
    """As start-stop-daemon sees it: a zombie not yet reaped still counts."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_init_script_start_status_stop(init_script):
    result = init_script("status")
    assert result.returncode == 3, result
    assert "sseserver is not running" in result.stdout

    result = init_script("start")
    assert result.returncode == 0, (result, init_script.logfile.read_text())
    pid = int(init_script.pidfile.read_text())
    assert process_alive(pid)
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[1:8] == [
        TWISTD.encode(),
        b"-n",
        b"--pidfile",
        str(init_script.pidfile).encode(),
        b"--logfile",
        b"-",
        b"sseserver",
    ]
    result = init_script("status")
    assert result.returncode == 0, result
    assert f"sseserver is running (pid {pid})" in result.stdout
    # A second start leaves the running one alone.
    assert init_script("start").returncode == 0
    assert int(init_script.pidfile.read_text()) == pid

    # It serves: control port and FIFO, with the options of its config file.
    sse, control = log_ports(init_script.logfile)
    stream = Stream(sse, "/sse/color")
    with ControlClient(control) as client:
        client.send(b"color = from control\n")
        client.send(b"tcpnumberofclients\n")
        assert client.reply() == {"numberofclients": 1}
    with open(init_script.fifo, "wb") as fifo:
        fifo.write(b"color = from fifo\ncolor = " + END + b"\n")
    expect(stream, [(b"from control", None), (b"from fifo", None)])

    # copytruncate (etc/logrotate.d): the log is appended to, so after a
    # truncation the next lines start at offset 0, with no hole of NULs.
    os.truncate(init_script.logfile, 0)
    with ControlClient(control) as client:
        client.send(b"numberofclients\n")
    deadline = time.monotonic() + TIMEOUT
    while b"Number of connected clients: 1" not in init_script.logfile.read_bytes():
        assert time.monotonic() < deadline, init_script.logfile.read_bytes()[:200]
        time.sleep(0.05)
    assert b"\0" not in init_script.logfile.read_bytes()

    result = init_script("stop")
    assert result.returncode == 0, result
    assert not process_alive(pid)
    assert not init_script.pidfile.exists()
    # The stream ended cleanly (final chunk) on the way out.
    stream.read_to_end()
    assert stream.finished
    stream.close()
    assert init_script("status").returncode == 3
    # Stopping a stopped server is fine.
    assert init_script("stop").returncode == 0


def test_init_script_restart_and_stale_pidfile(init_script):
    assert init_script("start").returncode == 0
    first = int(init_script.pidfile.read_text())
    size = init_script.logfile.stat().st_size
    result = init_script("restart")
    assert result.returncode == 0, (result, init_script.logfile.read_text())
    second = int(init_script.pidfile.read_text())
    assert second != first and not process_alive(first) and process_alive(second)
    sse, control = log_ports(init_script.logfile, since=size)
    stream = Stream(sse, "/sse")
    with ControlClient(control) as client:
        client.send(b"x = after restart\n* = " + END + b"\n")
    expect(stream, [(b"after restart", None)])
    stream.close()

    # Killed without a chance to clean up: the pidfile stays, status says so,
    # and start replaces it.
    os.kill(second, signal.SIGKILL)
    deadline = time.monotonic() + TIMEOUT
    while process_alive(second):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert init_script.pidfile.exists()
    result = init_script("status")
    assert result.returncode == 1, result
    assert "not running but" in result.stdout
    assert init_script("start").returncode == 0
    third = int(init_script.pidfile.read_text())
    assert third != second and process_alive(third)
    assert init_script("stop").returncode == 0
    assert not process_alive(third)


def test_init_script_start_failure_is_reported(init_script, tmp_path):
    """A port that cannot be bound: start fails, nothing keeps running."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "sseserver.conf"
        config.write_text(config.read_text().replace("tcp:0:", f"tcp:{port}:", 1))
        result = init_script("start")
        assert result.returncode == 1, result
        assert "see " in result.stderr
        assert "cannot listen on" in init_script.logfile.read_text()
        assert not init_script.pidfile.exists()
        assert init_script("status").returncode == 3


def test_init_script_usage():
    result = subprocess.run(
        ["sh", str(INIT), "bogus"], capture_output=True, text=True, check=False
    )
    if result.returncode == 5:  # no twistd at the installed path, as here
        assert "not found or not executable" in result.stderr
    else:
        assert result.returncode == 3
        assert (
            "Usage: /etc/init.d/sseserver {start|stop|restart|force-reload|status}"
            in (result.stderr)
        )


# --- logrotate ---------------------------------------------------------------


def logrotate_stanzas(text: str) -> dict:
    stanzas, current, name = {}, None, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("{"):
            assert current is None, line
            name, current = line[:-1].strip(), []
        elif line == "}":
            stanzas[name], current = current, None
        else:
            assert current is not None, line
            current.append(line)
    assert current is None
    return stanzas


def test_logrotate_rotates_the_init_script_log_by_copytruncate():
    stanzas = logrotate_stanzas(LOGROTATE.read_text())
    logfile = shell_settings(DEFAULTS)["LOGFILE"]
    assert list(stanzas) == [logfile]
    directives = stanzas[logfile]
    # twistd's --logfile cannot be renamed under it (no reopen signal) nor
    # truncated (no O_APPEND); the init script's log is appended to by
    # start-stop-daemon: copytruncate, and no create/postrotate signal.
    assert "copytruncate" in directives
    assert "su sseserver sseserver" in directives
    assert not any(
        d.split()[0] in ("create", "postrotate", "prerotate") for d in directives
    )
    assert any(re.fullmatch(r"rotate \d+", d) for d in directives)
    assert '--output "$LOGFILE"' in INIT.read_text()
    assert "--logfile -" in INIT.read_text()


# --- reverse proxies ---------------------------------------------------------


def test_nginx_snippet_structure():
    blocks = nginx_blocks(NGINX.read_text())
    locations = [(args, body) for args, body in blocks if body is not None]
    assert [args for args, _ in locations] == [["location", "/sse"]]
    body = {args[0]: args[1:] for args, _ in locations[0][1]}
    headers = [args[1:] for args, _ in locations[0][1] if args[0] == "proxy_set_header"]
    assert body["proxy_pass"] == ["http://127.0.0.1:8080"]
    assert body["proxy_http_version"] == ["1.1"]
    assert body["proxy_buffering"] == ["off"]
    assert body["proxy_cache"] == ["off"]
    assert ["Connection", ""] in headers
    assert nginx_seconds(body["proxy_read_timeout"][0]) >= 3600
    # sseserver listens where the proxy sends.
    options = Options()
    options.parseOptions(["--config", str(CONFIG)])
    assert options["port"] == ["tcp:8080:interface=127.0.0.1"]


def nginx_t(tmp_path, http: str) -> None:
    """C{nginx -t} on a configuration whose http block holds C{http}."""
    (tmp_path / "logs").mkdir()
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/logs/error.log;\n"
        f"events {{}}\nhttp {{\n access_log off;\n{http}\n}}\n"
    )
    result = subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_snippet_passes_nginx_t(tmp_path):
    nginx_t(
        tmp_path,
        f" server {{\n  listen 127.0.0.1:{free_port()};\n  include {NGINX};\n }}",
    )


def test_apache_snippet_structure():
    text = APACHE.read_text()
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert lines[0] == '<Location "/sse">' and lines[-1] == "</Location>"
    directives = {}
    for line in lines[1:-1]:
        words = shlex.split(line)
        directives[words[0]] = words[1:]
    proxy = directives["ProxyPass"]
    assert proxy[0] == "http://127.0.0.1:8080/sse"
    parameters = dict(p.split("=", 1) for p in proxy[1:])
    assert parameters["flushpackets"] == "on"
    assert int(parameters["timeout"]) >= 3600
    assert directives["ProxyPassReverse"] == ["http://127.0.0.1:8080/sse"]
    assert directives["SetEnv"] == ["no-gzip", "1"]


# The cluster examples (README.rst, "Running a cluster")


def test_node_template_passes_systemd_analyze_verify(tmp_path):
    text = NODE_SERVICE.read_text()
    assert text.count(INSTALLED_TWISTD) == 1
    template = tmp_path / "sseserver@.service"
    template.write_text(text.replace(INSTALLED_TWISTD, TWISTD))

    def verify() -> subprocess.CompletedProcess:
        return subprocess.run(
            ["systemd-analyze", "verify", "./sseserver@node1.service"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    result = verify()
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    template.write_text(template.read_text().replace("UMask=", "UMaks="))
    assert "Unknown key 'UMaks'" in verify().stderr  # the instance was read
    (exec_start,) = unit_values(NODE_SERVICE)[("Service", "ExecStart")]
    assert shlex.split(exec_start)[-2:] == ["--config", "/etc/sseserver/%i.conf"]


def test_node_configs_make_a_two_node_cluster_behind_the_nginx_example():
    nodes = []
    for path in NODES:
        options = Options()
        options.parseOptions(["--config", str(path)])
        nodes.append(options)
    assert nodes[0]["redis"] == nodes[1]["redis"]
    assert nodes[0]["redis"].host == "10.0.0.5"
    assert [o["workers"] for o in nodes] == [2, 2]
    assert [o["port"] for o in nodes] == [
        ["tcp:8080:interface=10.0.0.1"],
        ["tcp:8080:interface=10.0.0.2"],
    ]
    upstream = [b for b in nginx_blocks(NGINX_CLUSTER.read_text()) if b[1] is not None]
    servers = [args[1] for args, _ in upstream[0][1] if args[0] == "server"]
    assert servers == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_nginx_cluster_example_passes_nginx_t(tmp_path):
    text = NGINX_CLUSTER.read_text().replace(
        "listen 80;", f"listen 127.0.0.1:{free_port()};"
    )
    (tmp_path / "cluster.conf").write_text(text)
    nginx_t(tmp_path, f" include {tmp_path}/cluster.conf;")
