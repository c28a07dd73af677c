"""The Debian package, for real: build, ``dpkg -i`` into this machine's root, run, upgrade, purge.

Runs as its own CI step (``pytest -m package``): it builds the package (about
a minute) and installs it system-wide, so it needs root and dpkg. systemd is
not PID 1 here, so the service is not started by systemd: the installed
binary is run as the service would run it (the service user, a credentials
directory as ``LoadCredential=`` makes it, the kernel's W^X policy as
``MemoryDenyWriteExecute=``), against a Mosquitto and the WMS simulator on
loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from e2e import connect_fleet, publish, read_ids_by_scanner, wait_until

from simulators.broker import MosquittoBroker, free_port
from simulators.wms import WmsSimulator

pytestmark = pytest.mark.package

ROOT = Path(__file__).resolve().parent.parent
PKG = "warehouse-gateway"
EXE = Path("/usr/bin/warehouse-gateway")
CONF = Path("/etc/warehouse-gateway/gateway.toml")
STATE = Path("/var/lib/warehouse-gateway")
UNIT = Path("/lib/systemd/system/warehouse-gateway.service")
LEFT_BEHIND = [Path("/opt/warehouse-gateway"), Path("/etc/warehouse-gateway"), STATE, EXE, UNIT,
               Path("/usr/lib/sysusers.d/warehouse-gateway.conf"),
               Path("/usr/lib/tmpfiles.d/warehouse-gateway.conf")]

# Run by the installed venv's Python as the service user: turn on the kernel's
# W^X policy (what MemoryDenyWriteExecute= asks for; kept across execve), prove
# it holds, load the compiled libraries under it, then become the gateway.
MDWE_WRAPPER = r"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_MDWE, PR_GET_MDWE, REFUSE_EXEC_GAIN = 65, 66, 1
if libc.prctl(PR_SET_MDWE, REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed: errno %d" % ctypes.get_errno())
assert libc.prctl(PR_GET_MDWE, 0, 0, 0, 0) == REFUSE_EXEC_GAIN
try:
    mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
except OSError:
    pass
else:
    sys.exit("W^X is not enforced: a writable+executable mapping was allowed")
import asyncio, uvloop, pydantic, asyncua
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives import hashes
key = ec.generate_private_key(ec.SECP256R1())
key.public_key().verify(key.sign(b"x", ec.ECDSA(hashes.SHA256())), b"x",
                        ec.ECDSA(hashes.SHA256()))
class M(pydantic.BaseModel):
    n: int
assert M.model_validate({"n": "3"}).n == 3
uvloop.run(asyncio.sleep(0))
print("mdwe-ok", flush=True)
os.execv(sys.argv[1], sys.argv[1:])
"""


def _run(*argv: str, check: bool = True, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "DEBIAN_FRONTEND": "noninteractive", **(env or {})})
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {out.returncode}:\n{out.stdout}\n"
                             f"{out.stderr}")
    return out


def _installed_version() -> str | None:
    out = _run("dpkg-query", "-W", "-f=${Status} ${Version}", PKG, check=False)
    if out.returncode != 0 or "installed" not in out.stdout.split(" ")[:3]:
        return None
    return out.stdout.rsplit(" ", 1)[-1]


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The package as built, and the same package with a bumped version."""
    if os.geteuid() != 0:
        pytest.skip("the package test installs into the real root: run it as root")
    for tool in ("dpkg", "dpkg-deb"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is missing: this is not a Debian system")
    if _installed_version() is not None:
        pytest.fail(f"{PKG} is already installed on this machine; the test will not touch "
                    f"an existing install (dpkg --purge {PKG} first)")
    out = tmp_path_factory.mktemp("debs")
    t0 = time.monotonic()
    _run(str(ROOT / "scripts" / "build-deb.sh"), "--version", "0.1.0-1", "--out", str(out))
    print(f"build: {time.monotonic() - t0:.1f} s")
    first = out / "warehouse-gateway_0.1.0-1_amd64.deb"
    tree = out / "tree"
    _run("dpkg-deb", "-R", str(first), str(tree))
    control = tree / "DEBIAN" / "control"
    control.write_text(control.read_text().replace("Version: 0.1.0-1", "Version: 0.1.0-2"))
    second = out / "warehouse-gateway_0.1.0-2_amd64.deb"
    _run("dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(tree), str(second))
    print(f"package: {first.stat().st_size / 1e6:.1f} MB")
    return first, second


def _store_stats(user: pwd.struct_passwd) -> dict[str, object]:
    """``store stats`` as the service user (docs/install.md), without the free-disk figures."""
    out = _run("setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
               str(EXE), "store", "stats", "--db", str(STATE / "buffer.db"))
    stats: dict[str, object] = json.loads(out.stdout)
    return {k: v for k, v in stats.items() if "disk" not in k and "free" not in k}


def _readyz(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
            return int(r.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def _site_config(broker: MosquittoBroker, wms: WmsSimulator, status_port: int) -> str:
    return f"""\
# Edited on site: the test's broker and WMS simulator.
[site]
id = "DC-PKG"

[store]
path = "{STATE / 'buffer.db'}"

[[brokers]]
id = "site"
host = "127.0.0.1"
port = {broker.port}

[[devices]]
id = "scan-01"
driver = "mqtt"
role = "scanner"
broker = "site"
topic = "site/DC-EAST-1/scanners/scan-01/reads"

[[sinks]]
id = "wms"
type = "http"
url = "{wms.url}"
token_file = "wms.token"
backoff_initial = "50ms"
backoff_max = "1s"

[status]
host = "127.0.0.1"
port = {status_port}
"""


def _installed_as_documented() -> pwd.struct_passwd:
    """After ``dpkg -i``: the user, the folders with their owners and modes, the command."""
    user = pwd.getpwnam("warehouse-gateway")
    st = STATE.stat()
    assert (st.st_uid, st.st_mode & 0o777) == (user.pw_uid, 0o750)
    cst = Path("/etc/warehouse-gateway/credentials").stat()
    assert (cst.st_uid, cst.st_mode & 0o777) == (0, 0o700)
    assert EXE.resolve() == Path("/opt/warehouse-gateway/venv/bin/warehouse-gateway")
    shipped = _run(str(EXE), "check", "--config", str(CONF))
    assert "ok — site DC-1" in shipped.stdout
    if shutil.which("systemd-analyze"):
        verify = _run("systemd-analyze", "verify", str(UNIT), check=False)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    return user


def _edit_for_site(text: str, creds: Path, user: pwd.struct_passwd) -> None:
    """The site edits the conffile and adds its WMS token as a credential."""
    CONF.write_text(text)
    Path("/etc/warehouse-gateway/credentials/wms.token").write_text("pkg-token\n")
    # What LoadCredential=credentials:/etc/warehouse-gateway/credentials makes of it.
    (creds / "credentials_wms.token").write_text("pkg-token\n")
    os.chown(creds, user.pw_uid, user.pw_gid)
    os.chown(creds / "credentials_wms.token", user.pw_uid, user.pw_gid)
    os.chmod(creds, 0o700)
    _run(str(EXE), "check", "--config", str(CONF), env={"CREDENTIALS_DIRECTORY": str(creds)})


def _upgrade(deb: Path, creds: Path, user: pwd.struct_passwd) -> None:
    """Install the bumped version: the store and the edited conffile stay as they were."""
    edited = CONF.read_text()
    before = _store_stats(user)
    _run("dpkg", "-i", str(deb))
    assert _installed_version() == "0.1.0-2"
    assert CONF.read_text() == edited
    assert Path("/etc/warehouse-gateway/credentials/wms.token").exists()
    assert _store_stats(user) == before
    assert {p.stat().st_uid for p in STATE.iterdir()} == {user.pw_uid}
    _run(str(EXE), "check", "--config", str(CONF), env={"CREDENTIALS_DIRECTORY": str(creds)})


def _purge() -> None:
    out = _run("dpkg", "--purge", PKG, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert _installed_version() is None
    assert [p for p in LEFT_BEHIND if p.exists() or p.is_symlink()] == []


async def test_install_run_upgrade_purge(debs: tuple[Path, Path], broker: MosquittoBroker,
                                         wms: WmsSimulator) -> None:
    first, second = debs
    wms.faults.token = "pkg-token"
    creds = Path(tempfile.mkdtemp(prefix="wg-creds-", dir="/tmp"))
    gateway: asyncio.subprocess.Process | None = None
    try:
        t0 = time.monotonic()
        await asyncio.to_thread(_run, "dpkg", "-i", str(first))
        assert _installed_version() == "0.1.0-1"
        user = await asyncio.to_thread(_installed_as_documented)
        status_port = free_port()
        await asyncio.to_thread(_edit_for_site, _site_config(broker, wms, status_port), creds,
                                user)

        gateway = await asyncio.create_subprocess_exec(
            "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
            "/opt/warehouse-gateway/venv/bin/python", "-c", MDWE_WRAPPER, str(EXE), "run",
            "--config", str(CONF),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env={"PATH": "/usr/bin:/bin", "CREDENTIALS_DIRECTORY": str(creds), "HOME": "/"},
            cwd="/")
        proc = gateway
        await wait_until(lambda: _readyz(status_port) == 200 or proc.returncode is not None,
                         60, "/readyz of the installed gateway")
        assert proc.returncode is None
        print(f"install to /readyz: {time.monotonic() - t0:.1f} s")
        fleet = connect_fleet(broker, count=1, client_id="pkg-scanner")
        try:
            await publish(fleet, 3)
        finally:
            fleet.close()
        await wait_until(lambda: len(read_ids_by_scanner(wms).get("scan-01", [])) == 3, 30,
                         "3 reads of the installed gateway at the WMS")
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        log = out.decode()
        assert proc.returncode == 0, log
        assert log.startswith("mdwe-ok"), log[:2000]
        await asyncio.to_thread(_upgrade, second, creds, user)
    finally:
        if gateway is not None and gateway.returncode is None:
            gateway.kill()
            await gateway.wait()
        shutil.rmtree(creds, ignore_errors=True)
        await asyncio.to_thread(_purge)
