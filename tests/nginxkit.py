"""Debian's nginx in front of a tidings server, with TLS on a self-signed certificate.

:class:`Nginx` writes a configuration from the one in docs/operations.md
("nginx in front"), on two free ports: ``url`` (the recommended settings:
WebSocket upgrade, SSE unbuffered, timeouts above the long-poll wait) and
``buffering_url`` (the same with buffering left on and tidings'
``X-Accel-Buffering: no`` ignored, as a misconfigured proxy would). It starts
``nginx -g 'daemon off;'`` and stops it. ``ca_file`` is the certificate to
trust. Without ``/usr/sbin/nginx`` the tests that use it skip (fail in CI);
``scripts/test`` installs it as root.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

NGINX = "/usr/sbin/nginx"


def nginx_missing() -> str | None:
    """Why nginx cannot run here, or ``None``."""
    if not Path(NGINX).exists() and shutil.which("nginx") is None:
        return f"{NGINX} is missing: apt-get install nginx (scripts/test does, as root)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key, written to ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidings test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


LOCATION = """
        proxy_pass http://tidings;
        proxy_http_version 1.1;
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header Upgrade $http_upgrade;
        proxy_set_header Connection $connection_upgrade;
        proxy_read_timeout 75s;
        proxy_send_timeout 75s;
"""

CONFIG = """
{user}
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream tidings {{
        server 127.0.0.1:{upstream};
        keepalive 16;
    }}
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
{location}
            proxy_buffering off;
            proxy_cache off;
        }}
    }}
    server {{
        listen 127.0.0.1:{buffering_port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
{location}
            proxy_buffering on;
            proxy_ignore_headers X-Accel-Buffering;
            proxy_buffer_size 16k;
            proxy_buffers 8 64k;
        }}
    }}
}}
"""


class Nginx:
    """nginx on two TLS ports in front of ``127.0.0.1:upstream``; a context manager."""

    def __init__(self, upstream: int, directory: Path) -> None:
        self.directory = directory
        self.port, self.buffering_port = free_port(), free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.buffering_url = f"https://127.0.0.1:{self.buffering_port}"
        self.ca_file, key_file = self_signed(directory)
        user = "user root;" if os.geteuid() == 0 else ""
        self.config = directory / "nginx.conf"
        self.config.write_text(CONFIG.format(
            user=user, prefix=directory, upstream=upstream, port=self.port,
            buffering_port=self.buffering_port, cert=self.ca_file, key=key_file,
            location=LOCATION))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Nginx:
        binary = NGINX if Path(NGINX).exists() else shutil.which("nginx") or NGINX
        self.process = subprocess.Popen(
            [binary, "-p", str(self.directory), "-c", str(self.config), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        for port in (self.port, self.buffering_port):
            while True:
                if self.process.poll() is not None:
                    err = self.process.stderr.read().decode() if self.process.stderr else ""
                    raise RuntimeError(f"nginx did not start: {err}")
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("nginx did not listen within 10 s")
                time.sleep(0.02)
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stderr is not None:
            self.process.stderr.close()
