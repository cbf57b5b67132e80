"""What a sysadmin relies on: secrets from systemd credentials, metrics, journald fields."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import structlog

from conftest import MP3, SEGUE, Node, make_tone, segue
from segue import log


def test_private_keys_from_systemd_credentials(fresh_node: Node, tmp_path: Path) -> None:
    (track,) = fresh_node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t"))
    creds = tmp_path / "credentials"
    creds.mkdir(mode=0o700)
    for name in ("edge-x25519.pem", "edge-rsa.pem"):
        shutil.move(fresh_node.root / "keys" / name, creds / name)
    fresh_node.conf.write_text(fresh_node.conf.read_text().replace(
        'edge_keys = ["keys/edge-x25519.pem", "keys/edge-rsa.pem"]',
        'edge_keys = ["credential:edge-x25519.pem", "credential:edge-rsa.pem"]'))
    without = subprocess.run([*SEGUE, "run", "--config", str(fresh_node.conf)],
                             capture_output=True, text=True, timeout=30)
    assert without.returncode == 2
    assert "seal.edge_keys" in without.stderr and "CREDENTIALS_DIRECTORY" in without.stderr
    fresh_node.start(env={"CREDENTIALS_DIRECTORY": str(creds)})
    with urllib.request.urlopen(fresh_node.url(track, fresh_node.token()), timeout=10) as r:
        assert r.status == 200


def test_metrics_cover_requests_bytes_streams_latency_failures_and_cache(node: Node) -> None:
    track = next(iter(node.tracks))
    for _ in range(2):
        with urllib.request.urlopen(node.url(track, node.token()), timeout=10) as r:
            size = len(r.read())
    with urllib.request.urlopen(node.base + "/metrics", timeout=10) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    tracks = 'route="/v1/tracks/{track_id}",status="200"'
    assert samples[f"segue_http_requests_total{{{tracks}}}"] >= 2
    assert samples[f"segue_http_response_bytes_total{{{tracks}}}"] >= 2 * size
    assert "segue_streams_in_flight" in samples
    assert samples["segue_time_to_first_byte_seconds_count"] >= 2
    assert "segue_chunk_auth_failures_total" in samples
    assert samples['segue_open_track_lookups_total{outcome="hit"}'] >= 1


def test_journald_entries_have_upper_case_fields(monkeypatch: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    from systemd import journal

    sent = []
    monkeypatch.setattr(journal, "send", lambda message, **fields: sent.append((message, fields)))
    listening = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listening.bind(str(tmp_path / "journal.sock"))
    monkeypatch.setattr(log, "JOURNAL_SOCKET", tmp_path / "journal.sock")
    log.configure("journald", "info")
    try:
        structlog.get_logger("test").info("request", track="abc", duration_ms=1.5,
                                          **{"weird-key": 1})
    finally:
        log.configure("auto", "warning")
    ((message, fields),) = sent
    assert message == "request"
    assert fields["TRACK"] == "abc"
    assert fields["DURATION_MS"] == "1.5"
    assert fields["WEIRD_KEY"] == "1"
    assert fields["PRIORITY"] == "6"
    assert fields["SYSLOG_IDENTIFIER"] == "segued"
    listening.close()


def test_journald_format_without_a_journald_logs_json_to_stderr_after_a_warning(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    monkeypatch.setattr(log, "JOURNAL_SOCKET", tmp_path / "no-journald-here")
    log.configure("journald", "info")
    try:
        structlog.get_logger("test").info("request", track="abc")
    finally:
        with capsys.disabled():  # later tests must not log into this test's closed stderr
            log.configure("auto", "warning")
    warning, line = (json.loads(text) for text in capsys.readouterr().err.splitlines())
    assert warning["level"] == "warning" and "no journald listens" in warning["event"]
    assert line["event"] == "request" and line["track"] == "abc"


def test_a_sequential_stream_reads_ahead_and_a_second_play_comes_from_the_cache(
        fresh_node: Node, tmp_path: Path) -> None:
    source = make_tone(tmp_path / "long.wav", ["-c:a", "pcm_s16le"], seconds=20, title="L")
    (track,) = fresh_node.pack(source)
    fresh_node.start()

    def samples() -> dict[str, float]:
        with urllib.request.urlopen(fresh_node.base + "/metrics", timeout=10) as r:
            lines = r.read().decode().splitlines()
        return {n: float(v) for n, _, v in (line.rpartition(" ") for line in lines)
                if n and not n.startswith("#")}

    for _ in range(2):
        with urllib.request.urlopen(fresh_node.url(track, fresh_node.token()), timeout=30) as r:
            assert r.read() == source.read_bytes()
    after = samples()
    chunks = -(-source.stat().st_size // (256 * 1024))
    assert after['segue_read_ahead_chunks_total{outcome="started"}'] >= chunks // 2
    # The second play read nothing from the store: every chunk was a cache hit.
    assert after['segue_store_reads_total{outcome="ok",share="local"}'] == chunks
    assert after['segue_chunk_cache_lookups_total{outcome="hit"}'] >= chunks


def test_https_when_the_config_names_a_certificate(fresh_node: Node, tmp_path: Path) -> None:
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), False)
            .sign(key, hashes.SHA256()))
    (fresh_node.root / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file = fresh_node.root / "tls.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o644)
    fresh_node.conf.write_text(fresh_node.conf.read_text().replace(
        "[http]\n", '[http]\ntls_certificate = "tls.crt"\ntls_key = "tls.key"\n'))
    loose = segue("check-config", "--config", fresh_node.conf, check=False)
    assert loose.returncode == 2 and f"chmod 600 {key_file}" in loose.stderr
    key_file.chmod(0o600)
    (track,) = fresh_node.pack(make_tone(tmp_path / "t.mp3", MP3, seconds=2, title="t"))
    fresh_node.start(wait=False)
    address = fresh_node.wait_for_event("listening", timeout=20)["addresses"][0]
    port = address.rsplit(":", 1)[1]
    context = ssl.create_default_context(cafile=str(fresh_node.root / "tls.crt"))
    url = f"https://localhost:{port}/v1/tracks/{track}?token={fresh_node.token()}"
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        assert r.status == 200
        assert r.read() == (tmp_path / "t.mp3").read_bytes()
    # Plain HTTP on the TLS port gets no HTTP answer (the handshake fails, the node goes on).
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://localhost:{port}/healthz", timeout=5)
    with urllib.request.urlopen(f"https://localhost:{port}/healthz", timeout=10,
                                context=context) as r:
        assert r.status == 200
