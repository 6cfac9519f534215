"""Acquisition over real HTTP: the route a user with internet takes, the order of the sources, and every way it can fail.

Each failure must name the file and the cause, and leave the raw cache without partial files and with
any previously verified file intact.
"""
import http.server
import socket
import threading

import pytest

from conftest import DATA_FILES, cache_listing, free_port, make_zip, settings_for
from incomeops.config import Settings
from incomeops.data import SOURCE_FILES, ChecksumError, DataSourceError, DownloadError, acquire, file_digests


@pytest.fixture(scope="module")
def original(mirror) -> dict[str, bytes]:
    return {name: (mirror / name).read_bytes() for name in DATA_FILES}


def test_downloads_the_archive_and_verifies_every_file(http_root, project, original):
    www, url = http_root
    make_zip(www / "adult.zip", {**original, "Index": b"extra members are ignored"})
    s = settings_for(project, data_url=f"{url}/adult.zip")
    paths = acquire(s)
    assert cache_listing(s) == sorted(DATA_FILES)
    for name in ("adult.data", "adult.test"):
        assert file_digests(paths[name])["sha256"] == SOURCE_FILES[name].sha256


def test_downloads_individual_files_from_a_folder_url(http_root, project, original):
    www, url = http_root
    for name, content in original.items(): (www / name).write_bytes(content)
    s = settings_for(project, data_url=f"{url}/")
    acquire(s)
    assert cache_listing(s) == sorted(DATA_FILES)


def test_the_environment_alone_chooses_the_download(http_root, project, original, monkeypatch):
    www, url = http_root
    for name, content in original.items(): (www / name).write_bytes(content)
    monkeypatch.delenv("INCOMEOPS_DATA_MIRROR", raising=False)
    monkeypatch.setenv("INCOMEOPS_DATA_URL", f"{url}/")
    monkeypatch.setenv("INCOMEOPS_ROOT", str(project))
    s = Settings()
    assert s.data_mirror is None
    acquire(s)
    assert cache_listing(s) == sorted(DATA_FILES)


def test_a_mirror_set_wins_and_the_url_is_never_contacted(project, mirror):
    s = settings_for(project, data_mirror=mirror, data_url=f"http://127.0.0.1:{free_port()}/adult.zip")
    acquire(s)
    assert cache_listing(s) == sorted(DATA_FILES)


def test_a_mirror_missing_a_file_is_refused_rather_than_downloaded(http_root, project, original, tmp_path):
    www, url = http_root
    for name, content in original.items(): (www / name).write_bytes(content)
    partial_mirror = tmp_path / "mirror"
    partial_mirror.mkdir()
    (partial_mirror / "adult.data").write_bytes(original["adult.data"])
    s = settings_for(project, data_mirror=partial_mirror, data_url=f"{url}/")
    with pytest.raises(DataSourceError, match="adult.test is missing from the data mirror"):
        acquire(s)
    assert cache_listing(s) == ["adult.data"]


def test_wrong_bytes_from_a_folder_url_are_refused_and_nothing_partial_is_cached(http_root, project, original):
    www, url = http_root
    for name, content in original.items(): (www / name).write_bytes(content)
    (www / "adult.test").write_bytes(original["adult.test"].replace(b"Private", b"private", 1))
    s = settings_for(project, data_url=f"{url}/")
    with pytest.raises(ChecksumError, match="adult.test has the wrong checksum"):
        acquire(s, ["adult.test"])
    assert cache_listing(s) == []


def test_a_file_missing_from_a_folder_url_names_it_and_keeps_the_others(http_root, project, original):
    www, url = http_root
    for name in ("adult.data", "adult.test"): (www / name).write_bytes(original[name])
    s = settings_for(project, data_url=f"{url}/")
    with pytest.raises(DownloadError, match=rf"could not download {url}/adult.names: HTTP 404"):
        acquire(s)
    assert cache_listing(s) == ["adult.data", "adult.test"]


def test_second_run_reuses_the_cache_without_contacting_the_source(http_root, project, original):
    www, url = http_root
    make_zip(www / "adult.zip", original)
    s = settings_for(project, data_url=f"{url}/adult.zip")
    acquire(s)
    (www / "adult.zip").unlink()                       # the source is gone: only the cache can answer
    assert sorted(acquire(s)) == sorted(DATA_FILES)


def test_wrong_bytes_in_the_archive_are_refused_and_nothing_partial_is_cached(http_root, project, original):
    www, url = http_root
    tampered = original["adult.data"].replace(b"State-gov", b"State-Gov", 1)
    make_zip(www / "adult.zip", {**original, "adult.data": tampered})
    s = settings_for(project, data_url=f"{url}/adult.zip")
    with pytest.raises(ChecksumError) as e:
        acquire(s, ["adult.data"])
    msg = str(e.value)
    assert "adult.data has the wrong checksum" in msg
    assert SOURCE_FILES["adult.data"].sha256 in msg
    assert file_digests_of_bytes(tampered) in msg
    assert cache_listing(s) == []


def file_digests_of_bytes(content: bytes) -> str:
    import hashlib
    return hashlib.sha256(content).hexdigest()


def test_a_bad_download_keeps_the_verified_files_already_cached(http_root, project, original):
    www, url = http_root
    make_zip(www / "adult.zip", original)
    s = settings_for(project, data_url=f"{url}/adult.zip")
    acquire(s)
    before = {n: (s.raw_dir / n).read_bytes() for n in DATA_FILES}
    (s.raw_dir / "adult.test").unlink()
    make_zip(www / "adult.zip", {**original, "adult.test": original["adult.test"][:-500]})
    with pytest.raises(ChecksumError, match="adult.test is truncated"):
        acquire(s)
    assert cache_listing(s) == ["adult.data", "adult.names"]
    assert all((s.raw_dir / n).read_bytes() == before[n] for n in ("adult.data", "adult.names"))


def test_a_truncated_archive_is_reported_as_not_a_zip(http_root, project, original):
    www, url = http_root
    full = make_zip(www / "full.zip", original).read_bytes()
    (www / "adult.zip").write_bytes(full[: len(full) // 2])
    s = settings_for(project, data_url=f"{url}/adult.zip")
    with pytest.raises(DataSourceError, match=f"the archive {url}/adult.zip is not a valid zip"):
        acquire(s)
    assert cache_listing(s) == []


def test_an_archive_without_the_file_names_the_missing_file(http_root, project, original):
    www, url = http_root
    make_zip(www / "adult.zip", {"adult.data": original["adult.data"]})
    s = settings_for(project, data_url=f"{url}/adult.zip")
    with pytest.raises(DataSourceError, match=f"adult.test is missing from the archive {url}/adult.zip"):
        acquire(s)
    assert cache_listing(s) == ["adult.data"]          # the good file that came with it is kept


def test_http_errors_name_the_url_and_status(http_root, project):
    _, url = http_root
    s = settings_for(project, data_url=f"{url}/nothing-here.zip")
    with pytest.raises(DataSourceError, match=rf"could not download {url}/nothing-here.zip: HTTP 404"):
        acquire(s)
    assert cache_listing(s) == []


def test_an_unreachable_source_names_the_url_and_the_cause(project):
    url = f"http://127.0.0.1:{free_port()}/adult.zip"
    s = settings_for(project, data_url=url)
    with pytest.raises(DownloadError, match=rf"could not download {url}: .*[Cc]onnection refused") as e:
        acquire(s)
    assert "set INCOMEOPS_DATA_MIRROR to a folder holding adult.data, adult.test, adult.names" in str(e.value)
    assert cache_listing(s) == []


class _CutShortHandler(http.server.BaseHTTPRequestHandler):
    "Promises 1 MB and sends 1 KB, then hangs up: a dropped connection mid-download."
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self.wfile.write(b"x" * 1024)
        self.wfile.flush()
        self.close_connection = True
    def log_message(self, *args): pass


def test_a_connection_dropped_mid_download_is_reported(project):
    server = http.server.HTTPServer(("127.0.0.1", 0), _CutShortHandler)
    threading.Thread(target=server.handle_request, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/adult.zip"
    s = settings_for(project, data_url=url)
    try:
        with pytest.raises(DataSourceError, match=rf"could not download {url}: the connection closed after 1,024 of 1,048,576 bytes"):
            acquire(s)
    finally: server.server_close()
    assert cache_listing(s) == []


def test_a_silent_server_times_out_with_a_clear_message(project):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)                                  # accepts the connection, never answers
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/adult.zip"
    s = settings_for(project, data_url=url, download_timeout=0.5)
    try:
        with pytest.raises(DataSourceError, match=rf"could not download {url}: .*timed out"):
            acquire(s)
    finally: listener.close()
    assert cache_listing(s) == []
