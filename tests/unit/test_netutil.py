"""Who holds a port: named in the error a start gives when its port is taken."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from airflow_stack import netutil

LISTEN = ("import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
          "print(s.getsockname()[1], flush=True); time.sleep(30)")


def test_the_holder_of_a_port_is_named_by_pid_and_command():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert netutil.port_holder(sock.getsockname()[1]).startswith(f"pid {os.getpid()} (")
        free = sock.getsockname()[1]
    assert netutil.port_holder(free) == ""


def test_a_password_in_the_holders_command_line_is_masked():
    code = f"url = 'postgresql://user:hunter22@db/x'; {LISTEN}"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        holder = netutil.port_holder(int(proc.stdout.readline()))
        assert holder.startswith(f"pid {proc.pid} (") and "postgresql://user:***@db/x" in holder
        assert "hunter22" not in holder
    finally:
        proc.kill()
        proc.wait()


def test_a_holder_writing_to_a_log_file_names_it(tmp_path):
    """How a user tells which stack (state dir) holds the port: where its output goes."""
    log = tmp_path / "logs" / "api-server.log"
    log.parent.mkdir()
    code = LISTEN.replace("print(s.getsockname()[1], flush=True)", "print(s.getsockname()[1], file=sys.stderr)")
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
    try:
        holder = netutil.port_holder(int(proc.stderr.readline()))
        assert holder.startswith(f"pid {proc.pid} (") and holder.endswith(f", writing to {log}")
    finally:
        proc.kill()
        proc.wait()
