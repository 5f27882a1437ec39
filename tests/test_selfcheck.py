"""`histosynth selfcheck` on the CPU: the same items a GPU machine runs, at a smaller size."""
import json


def test_selfcheck_cpu_reports_every_item_and_fails_loudly(tmp_path, monkeypatch):
    """Every item runs for real and reports its speed; a broken item is FAIL with its traceback,
    the others still run, and the command exits 1."""
    import histosynth.gan.training.loop as training_loop
    from histosynth.cli import main

    def broken(*a, **k):
        raise RuntimeError("injected failure in the mask loop")

    monkeypatch.setattr(training_loop, "train_mask", broken)
    try:
        rc = main(["-q", "selfcheck", "--device", "cpu", "--outdir", str(tmp_path / "sc"), "--json",
                   str(tmp_path / "sc.json")])
    except SystemExit as exc:
        rc = exc.code
    assert rc == 1
    report = json.loads((tmp_path / "sc.json").read_text())
    status = {it["name"]: it for it in report["items"]}
    assert [n for n, it in status.items() if it["status"] == "FAIL"] == ["train spade", "train pix2pix"]
    assert "injected failure" in status["train spade"]["error"]
    for name in ("train class", "train attributes", "train expression", "generate", "reference classifier",
                 "fine-tune (read-ahead, metrics)", "evaluate", "classify"):
        assert status[name]["status"] == "PASS", status[name]
        assert status[name]["speed"] > 0
    for name in ("train class", "train attributes", "train expression"):
        assert "r1" in status[name]["detail"] and "ADA p 0.5" in status[name]["detail"]
    assert "FID" in status["evaluate"]["detail"] and "mixed" in status["classify"]["detail"]
    assert "FID" in status["fine-tune (read-ahead, metrics)"]["detail"]
    stats = [json.loads(x) for x in open(tmp_path / "sc" / "gan-class" / "stats.jsonl")]
    assert all(s["augment_p"] == 0.5 for s in stats)
    assert report["ok"] is False and report["bf16"] is False
