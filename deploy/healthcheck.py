"""The image's health check (python:slim has no curl): asks the server that this container runs whether it answers.

It reads the command line of the container's main process (PID 1, which deploy/entrypoint.sh replaced with the
server) to know what to ask and on which port: the API's /health (uvicorn, default port 8000), the Streamlit
form's /_stcore/health (8501) or the MLflow server's /health (5000). A one-shot job (train, monitor) has no
server: it counts as healthy while it runs. Standard library only; proxies are ignored (the server is local).

Usage: python deploy/healthcheck.py [--pid PID] [URL]        exit status 0: healthy, 1: not
"""
from __future__ import annotations

import argparse
import sys
import urllib.request
from pathlib import Path

SERVERS = {"uvicorn": ("/health", 8000), "streamlit": ("/_stcore/health", 8501), "mlflow": ("/health", 5000)}
PORT_FLAGS = ("--port", "-p", "--server.port")


def health_url(argv: list[str]) -> str | None:
    "The health endpoint of the server started by the command line `argv`, or None if it is not a known server."
    words = " ".join(argv)
    kind = next((k for k in SERVERS if k in words), None)
    if kind is None: return None
    path, port = SERVERS[kind]
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag in PORT_FLAGS: port = value or (argv[i + 1] if i + 1 < len(argv) else port)
    return f"http://127.0.0.1:{port}{path}"


def command_line(pid: int) -> list[str]:
    "The arguments of process `pid` (empty if it cannot be read)."
    try: raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError: return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def healthy(url: str, timeout: float = 4) -> bool:
    "True if `url` answers with a 2xx status within `timeout` seconds."
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as answer: return 200 <= answer.status < 300
    except OSError as e:
        print(f"unhealthy: {url}: {e}", file=sys.stderr)
        return False


def main(args: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url", nargs="?", help="ask this URL instead of working it out from the process")
    p.add_argument("--pid", type=int, default=1, help="the server's process (default: the container's main one)")
    a = p.parse_args(args)
    url = a.url or health_url(command_line(a.pid))
    if url is None: return 0  # a one-shot job, not a server
    return 0 if healthy(url) else 1


if __name__ == "__main__":
    sys.exit(main())
