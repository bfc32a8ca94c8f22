"""Shared by the benchmark scripts: paths, the machine, a local S3 server, and writing a section of RESULTS.md."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import platform
import re
import subprocess
import sys

import boto3
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("BEHOLDER_SHARED_DATA", os.path.join(os.path.dirname(REPO), "shared", "data"))
RESULTS = os.path.join(REPO, "bench", "RESULTS.md")


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()} CPU cores ({cpu}), {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"


@contextlib.contextmanager
def local_s3(bucket: str):
    """moto's S3 server on 127.0.0.1 with an empty ``bucket``: yields (endpoint URL, boto3 client)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        endpoint = "http://%s:%d" % server.get_host_and_port()
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket=bucket)
        yield endpoint, s3
    finally:
        server.stop()


def write_section(name: str, body: str) -> None:
    """Replace (or add) the section ``name`` of bench/RESULTS.md, stamped with date, machine, command."""
    stamp = (
        f"_Measured {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} on {machine()}, commit {commit()}._\n"
        f"_Command: `{' '.join(['python'] + sys.argv)}`_\n\n"
    )
    block = f"<!-- {name}:start -->\n{stamp}{body.strip()}\n<!-- {name}:end -->"
    empty = "# beholder benchmark results\n\nEvery figure below is written by the script named in its section; none is typed by hand.\n"
    text = open(RESULTS).read() if os.path.exists(RESULTS) else empty
    pattern = re.compile(rf"<!-- {name}:start -->.*?<!-- {name}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    with open(RESULTS, "w") as f:
        f.write(text)


def publish(name: str, title: str, body: str, write: bool = True) -> None:
    """Print a bench's results and, when ``write``, make them the section ``name`` of bench/RESULTS.md."""
    print(body)
    if write:
        write_section(name, f"## {title}\n\n{body}")


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
