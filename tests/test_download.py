import hashlib
import os

import pytest
from httpfaults import FaultServer

from histosynth.acquire.download import DownloadError, content_disposition_filename, fetch, safe_filename

DATA = os.urandom(3 * 1024 * 1024 + 123)
MD5 = hashlib.md5(DATA).hexdigest()
NOSLEEP = dict(sleep=lambda s: None, progress=False)


@pytest.mark.parametrize("faults", [["drop"], ["corrupt"], ["500"], ["429"], ["drop", "norange"], ["shortlen"],
                                    ["500", "drop", "429"]])
def test_fault_is_survived_byte_exact(tmp_path, faults):
    with FaultServer({"s.svs": DATA}, {"s.svs": faults}) as srv:
        res = fetch(f"{srv.url}/data/s.svs", tmp_path / "s.svs", md5=MD5, size=len(DATA), **NOSLEEP)
    assert (tmp_path / "s.svs").read_bytes() == DATA
    assert res.md5 == MD5
    assert not (tmp_path / "s.svs.partial").exists()


def test_drop_resumes_with_range(tmp_path):
    with FaultServer({"s.svs": DATA}, {"s.svs": ["drop"]}) as srv:
        res = fetch(f"{srv.url}/data/s.svs", tmp_path / "s.svs", md5=MD5, **NOSLEEP)
        ranges = [r[2] for r in srv.requests]
    assert ranges[0] is None and ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0
    assert res.resumed_bytes > 0


def test_resume_across_runs(tmp_path):
    (tmp_path / "s.svs.partial").write_bytes(DATA[:1000000])
    with FaultServer({"s.svs": DATA}) as srv:
        fetch(f"{srv.url}/data/s.svs", tmp_path / "s.svs", md5=MD5, **NOSLEEP)
        assert srv.requests[0][2] == "bytes=1000000-"
    assert (tmp_path / "s.svs").read_bytes() == DATA


def test_429_honours_retry_after(tmp_path):
    waits = []
    with FaultServer({"s.svs": DATA}, {"s.svs": ["429"]}) as srv:
        fetch(f"{srv.url}/data/s.svs", tmp_path / "s.svs", md5=MD5, sleep=waits.append, progress=False)
    assert waits == [1.0]


def test_persistent_md5_mismatch_fails_cleanly(tmp_path):
    with FaultServer({"s.svs": DATA}) as srv:
        with pytest.raises(DownloadError) as e:
            fetch(f"{srv.url}/data/s.svs", tmp_path / "s.svs", md5="0" * 32, label="SLIDE-7", **NOSLEEP)
    msg = str(e.value)
    assert "SLIDE-7" in msg and "0" * 32 in msg and MD5 in msg
    assert not (tmp_path / "s.svs").exists() and not (tmp_path / "s.svs.partial").exists()


def test_content_md5_is_checked(tmp_path):
    with FaultServer({"s.svs": DATA}, {"s.svs": ["corrupt", "corrupt"]}, content_md5=True) as srv:
        with pytest.raises(DownloadError, match="Content-MD5"):
            fetch(f"{srv.url}/data/s.svs", tmp_path / "s.svs", **NOSLEEP)  # no md5 given: the header alone catches it
    assert not (tmp_path / "s.svs").exists()


def test_gives_up_after_max_attempts(tmp_path):
    with FaultServer({"s.svs": DATA}, {"s.svs": ["500"] * 10}) as srv:
        with pytest.raises(DownloadError, match="giving up after 3 attempts"):
            fetch(f"{srv.url}/data/s.svs", tmp_path / "s.svs", md5=MD5, max_attempts=3, **NOSLEEP)
    assert not (tmp_path / "s.svs").exists()


def test_local_source_verified_and_existing_file_rechecked(tmp_path):
    src = tmp_path / "src.svs"
    src.write_bytes(DATA)
    dest = tmp_path / "out" / "a.svs"
    fetch(str(src), dest, md5=MD5, progress=False)
    assert dest.read_bytes() == DATA
    dest.write_bytes(b"tampered")  # a wrong file at the final path is replaced, not trusted
    fetch(src.as_uri(), dest, md5=MD5, progress=False)
    assert dest.read_bytes() == DATA


@pytest.mark.parametrize("name,expected", [("../../etc/passwd", "passwd"), ("/abs/x.svs", "x.svs"),
                                           ("..\\..\\win.svs", "win.svs"), ("a b;rm.svs", "a_b_rm.svs")])
def test_server_names_cannot_escape(name, expected):
    assert safe_filename(name) == expected
    assert content_disposition_filename(f'attachment; filename="{name}"') == expected


def test_unusable_name_rejected():
    with pytest.raises(DownloadError):
        safe_filename("..")


def test_local_files_are_verified_once_and_format_problems_say_what_the_file_is(tmp_path, caplog):
    """A local path is copied and verified once: a file that is not a slide or image fails with
    what it is and which formats are read (no checksum hint, no second copy); a plain striped
    TIFF passes the check."""
    import logging

    import numpy as np
    import tifffile

    from histosynth.slides.reader import openslide_problem

    text = tmp_path / "notes.svs"
    text.write_text("{\"this\": \"is json\"}")
    caplog.set_level(logging.INFO)
    with pytest.raises(DownloadError) as e:
        fetch(str(text), tmp_path / "out" / "s.svs", check=openslide_problem, **NOSLEEP)
    msg = str(e.value)
    assert "is a JSON document that cannot be read as a slide or image" in msg and "plain images through libvips" in msg
    assert "md5" not in msg.lower() and "fetching again" not in caplog.text
    assert not (tmp_path / "out" / "s.svs").exists() and not list((tmp_path / "out").glob("*.partial"))
    with pytest.raises(DownloadError, match="local file .* does not match the sample sheet .*md5"):
        fetch(str(text), tmp_path / "out" / "s.svs", md5="0" * 32, **NOSLEEP)
    assert "fetching again" not in caplog.text
    striped = tmp_path / "striped.tif"
    tifffile.imwrite(striped, np.full((256, 256, 3), 180, np.uint8), rowsperstrip=8)
    res = fetch(str(striped), tmp_path / "out" / "p.tif", check=openslide_problem, **NOSLEEP)
    assert res.path.exists() and res.attempts == 1
