"""The dashboard through Starlette's test client: every page, every action, every refusal
(Host, Origin, token, CSRF, files), escaping, the form's grid, datasets; metrics files;
`submit --sweep`; the watcher's events. The browser test is tests/test_web_browser.py."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from ltxq.metrics import METRICS, SAMPLES, MetricsWriter, read_lines
from ltxq.spool import Spool
from ltxq.web.app import Settings, create_app
from ltxq.web.data import downsample
from ltxq.web.watcher import Watcher

BASE = "http://127.0.0.1:8765"
XSS = "<script>alert(1)</script>"


@pytest.fixture
def world(env):
    """A spool with jobs in every state, a dataset folder `datasets/ds`, and a sample video."""
    datasets = env.root / "datasets"
    (datasets / "ds").mkdir(parents=True)
    (datasets / "ds" / "a.mp4").write_bytes(b"\x00" * 4000)
    (datasets / "ds" / "a.txt").write_text("a caption <b>bold</b>\n")
    env.config(dataset="datasets/ds", steps=2)
    done = env.submit("job.toml", "--name", XSS)
    env.failing_config(error="<img src=x onerror=alert(2)>", steps=1)
    failed = env.submit("bad.toml")
    env.run("daemon", "--trainer", "tests.fake_trainer:train", "--exit-when-idle")
    cancelled = env.submit("job.toml", "--name", "to-cancel")
    env.run("cancel", str(cancelled))
    pending = env.submit("job.toml", "--name", "waiting")
    broken = env.spool / "pending" / "broken.toml"
    broken.write_text("this is not toml [")
    os.utime(broken, (1e9, 1e9))  # settled long ago: adopted (set aside) at once
    spool = Spool(env.spool)
    spool.jobs()  # adopt: broken.toml goes to invalid/
    out = Path(env.job(done)["output_dir"])
    (out / "samples").mkdir(parents=True, exist_ok=True)
    (out / "samples" / "step_000002_0.mp4").write_bytes(bytes(range(256)) * 40)
    (out / "pytorch_lora_weights.safetensors").write_bytes(b"lora")
    writer = MetricsWriter(out)
    for step in (1, 2):
        writer.step(step, 0.5 / step, 1e-4, 1.0, 0.1, step)
    writer.sample(2, 0, "a <prompt>", 42, out / "samples" / "step_000002_0.mp4")
    env.ids = {"done": done, "failed": failed, "cancelled": cancelled, "pending": pending}
    env.datasets = datasets
    return env


def client(env, token: str | None = None, host: str = "127.0.0.1") -> TestClient:
    app = create_app(Settings(env.spool, env.root / "datasets", token=token, host=host,
                              base_dir=env.root))
    return TestClient(app, base_url=BASE)


def csrf(c: TestClient) -> dict[str, str]:
    if not c.cookies.get("ltxq_csrf"):
        c.get("/")
    return {"X-CSRF-Token": c.cookies["ltxq_csrf"]}


# --- pages -----------------------------------------------------------------------------------


def test_every_page_renders_and_escapes_what_users_wrote(world):
    ids = world.ids
    with client(world) as c:
        pages = ["/", "/?state=all", "/?state=done&name=to*", f"/jobs/{ids['done']}",
                 f"/jobs/{ids['failed']}", f"/jobs/{ids['pending']}",
                 f"/compare?jobs={ids['done']},{ids['failed']},{ids['pending']}", "/submit",
                 "/datasets", "/datasets/ds", "/fragments/queue", f"/jobs/{ids['done']}/part",
                 f"/jobs/{ids['done']}/part?part=samples", f"/jobs/{ids['done']}/part?part=files"]
        for url in pages:
            r = c.get(url)
            assert r.status_code == 200, url
            assert "<script>alert" not in r.text and "<img src=x" not in r.text, url
            assert "<b>bold</b>" not in r.text, url
        queue = c.get("/?state=all").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in queue
        assert f'href="/jobs/{ids["done"]}"' in queue
        assert "&lt;img src=x onerror=alert(2)&gt;" in queue  # the failed job's error
        assert "broken.toml" in queue and "invalid" in queue  # invalid files with their errors
        job = c.get(f"/jobs/{ids['done']}").text
        assert "step_000002_0.mp4" in job and "pytorch_lora_weights.safetensors" in job
        assert "a &lt;prompt&gt;" in job
        assert "a caption &lt;b&gt;bold&lt;/b&gt;" in c.get("/datasets/ds").text
        assert c.get("/jobs/999").status_code == 404
        assert c.get("/jobs/abc").status_code == 404
        assert c.get("/compare?jobs=1,x").status_code == 400
        ticked = c.get(f"/compare?jobs=&jobs={ids['done']}&jobs={ids['failed']}")
        assert ticked.status_code == 200 and f"job {ids['failed']}" in ticked.text
        assert c.get("/compare?jobs=999").status_code == 404
        assert c.get("/datasets/nope").status_code == 404
        headers = c.get("/").headers
        assert "script-src 'self';" in headers["content-security-policy"]
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-frame-options"] == "DENY" and headers["referrer-policy"] == "same-origin"


def test_api_jobs_is_status_json(world):
    with client(world) as c:
        api = c.get("/api/jobs").json()
    cli = world.status()
    assert [(r["id"], r["state"]) for r in api] == [(r["id"], r["state"]) for r in cli]


def test_metrics_and_log_by_offset(world):
    done = world.ids["done"]
    with client(world) as c:
        m = c.get(f"/jobs/{done}/metrics").json()
        assert m["step"] == [1, 2] and m["loss"] == [0.5, 0.25]
        again = c.get(f"/jobs/{done}/metrics?offset={m['offset']}").json()
        assert again["step"] == [] and again["offset"] == m["offset"]
        log = c.get(f"/jobs/{done}/log?offset=0").json()
        assert log["text"] and log["offset"] == len(log["text"].encode())
        assert c.get(f"/jobs/{done}/log?offset={log['offset']}").json()["text"] == ""
        assert c.get("/jobs/999/metrics").status_code == 404


def test_a_chosen_state_lists_every_job_a_page_at_a_time(env, monkeypatch):
    from ltxq.web import app

    monkeypatch.setattr(app, "PAGE_ROWS", 10)
    env.config(steps=1)
    env.run("submit", *["job.toml"] * 25)
    with client(env) as c:
        first = c.get("/?state=pending").text
        assert first.count('class="state-pending"') == 10 and "Page 1 of 3" in first
        assert 'id="job-25"' in first  # newest first
        last = c.get("/?state=pending&page=3").text
        assert last.count('class="state-pending"') == 5 and 'id="job-1"' in last
        assert "Page 3 of 3" in c.get("/?state=pending&page=99").text


def test_queue_of_folded_jobs_says_how_many_are_hidden(env):
    env.config(steps=1)
    env.run("submit", *["job.toml"] * 25)
    with client(env) as c:
        text = c.get("/").text
        assert "5 more pending" in text
        assert text.count('class="state-pending"') == 20
        assert c.get("/?state=pending").text.count('class="state-pending"') == 25


# --- actions ---------------------------------------------------------------------------------


ACTIONS = ["/jobs/{id}/cancel", "/jobs/{id}/resume", "/jobs/{id}/priority", "/clear", "/pause",
           "/unpause", "/submit", "/datasets", "/datasets/ds/upload",
           "/datasets/ds/clips/a.mp4/caption", "/datasets/ds/jobs/caption"]


def test_every_post_route_is_in_the_refusal_list(world):
    app = create_app(Settings(world.spool, world.datasets))
    posts = {r.path for r in app.routes if "POST" in (getattr(r, "methods", None) or ())}
    listed = {a.replace("{id}", "{job_id}").replace("ds/clips/a.mp4", "{name}/clips/{clip}")
              .replace("/ds/jobs/caption", "/{name}/jobs/{kind}").replace("/ds/", "/{name}/")
              for a in ACTIONS}
    assert posts == listed


@pytest.mark.parametrize("url", ACTIONS)
def test_actions_need_post_and_the_csrf_token(world, url):
    url = url.format(id=world.ids["pending"])
    def files() -> list[str]:  # the spool's state (tmp/ holds status's caches)
        return sorted(str(p) for p in world.spool.rglob("*") if "tmp" not in p.parts)

    with client(world) as c:
        c.get("/")
        before = files()
        assert c.post(url, data={"priority": "5"}).status_code == 403
        assert c.post(url, headers={"X-CSRF-Token": "wrong"}).status_code == 403
        assert c.post(url, data={"csrf": "wrong", "priority": "5"}).status_code == 403
        c.cookies.clear()
        assert c.post(url, headers={"X-CSRF-Token": ""}).status_code == 403
        if url not in ("/submit", "/datasets"):
            assert c.get(url).status_code in (404, 405)
    assert files() == before


def test_cancel_resume_priority_clear_pause(world):
    ids = world.ids
    with client(world) as c:
        h = {**csrf(c), "HX-Request": "true"}
        r = c.post(f"/jobs/{ids['pending']}/priority", data={"priority": "7"}, headers=h)
        assert r.status_code == 200 and world.job(ids["pending"])["priority"] == 7
        assert c.post(f"/jobs/{ids['pending']}/priority", data={"priority": "x"},
                      headers=h).status_code == 400
        assert c.post(f"/jobs/{ids['pending']}/cancel", headers=h).status_code == 200
        assert world.state(ids["pending"]) == "cancelled"
        r = c.post(f"/jobs/{ids['pending']}/cancel", headers=h)
        assert r.status_code == 409 and "flash error" in r.text
        assert c.post("/jobs/999/cancel", headers=h).status_code == 404
        assert c.post(f"/jobs/{ids['failed']}/resume", headers=h).status_code == 200
        assert world.state(ids["failed"]) == "pending"
        r = c.post(f"/jobs/{ids['cancelled']}/resume", data={"fresh": "1"}, headers=h)
        assert r.status_code == 200
        assert world.state(ids["cancelled"]) == "cancelled"
        assert len([j for j in world.status() if j["id"] is not None]) == 5
        assert c.post("/pause", headers=h).status_code == 200
        assert (world.spool / "control" / "pause").exists()
        assert "queue paused" in c.get("/").text
        assert c.post("/unpause", headers=h).status_code == 200
        assert not (world.spool / "control" / "pause").exists()
        assert c.post("/clear", data={"state": "nope"}, headers=h).status_code == 400
        r = c.post("/clear", data={"state": "all"}, headers=h)
        assert r.status_code == 200 and "cleared 3" in r.text
        # A plain form (no htmx) is answered with a redirect.
        r = c.post("/pause", data={"csrf": c.cookies["ltxq_csrf"]}, follow_redirects=False)
        assert r.status_code == 303


# --- Host, Origin, token ---------------------------------------------------------------------


def test_host_and_origin_are_checked(world):
    with client(world) as c:
        assert c.get("/", headers={"Host": "evil.example"}).status_code == 421
        assert c.get("/", headers={"Host": "localhost:8765"}).status_code == 200
        h = csrf(c)
        r = c.post("/pause", headers={**h, "Origin": "http://evil.example"})
        assert r.status_code == 403 and not (world.spool / "control" / "pause").exists()
        assert c.post("/pause", headers={**h, "Origin": "null"}).status_code == 403
        assert c.post("/pause", headers={**h, "Sec-Fetch-Site": "cross-site"}).status_code == 403
        assert c.post("/pause", headers={**h, "Origin": BASE}).status_code in (200, 303)


def test_a_wildcard_bind_accepts_this_machines_names_and_allowed_ones(world):
    import socket

    app = create_app(Settings(world.spool, world.datasets, token="t" * 16, host="0.0.0.0",
                              allow_hosts=("ltxq.example",)))
    with TestClient(app, base_url=BASE) as c:
        auth = {"Authorization": "Bearer " + "t" * 16}
        for host in (socket.gethostname(), "ltxq.example:8765", "127.0.0.1:8765"):
            assert c.get("/api/jobs", headers={**auth, "Host": host}).status_code == 200, host
        assert c.get("/api/jobs", headers={**auth, "Host": "evil.example"}).status_code == 421


def test_token_bearer_and_url_exchanged_for_a_strict_cookie(world):
    token = "s3cret-token-0123456789"
    with client(world, token=token) as c:
        assert c.get("/").status_code == 401
        assert c.get("/api/jobs").status_code == 401
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        r = c.get(f"/?token={token}&state=all", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/?state=all"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        assert c.get("/").status_code == 200  # the cookie now
        c.cookies.clear()
        assert c.get("/?token=wrong").status_code == 401
        c.cookies.clear()
        r = c.get(f"{BASE}//evil.example/x?token={token}", follow_redirects=False)
        assert r.headers["location"].startswith("/") and not r.headers["location"].startswith(
            "//")


def test_non_loopback_host_needs_a_token(env):
    p = env.run("web", "--host", "0.0.0.0", check=False)
    assert p.returncode == 2 and "--token" in p.stderr
    short = env.run("web", "--host", "0.0.0.0", "--token", "short", check=False)
    assert short.returncode == 2
    for command in ("web", "up"):
        assert env.run(command, "--help").returncode == 0


# --- files -----------------------------------------------------------------------------------


def test_files_by_job_kind_and_name_with_range(world):
    done = world.ids["done"]
    out = Path(world.job(done)["output_dir"])
    url = f"/jobs/{done}/files/samples/step_000002_0.mp4"
    with client(world) as c:
        r = c.get(url)
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
        assert r.headers["accept-ranges"] == "bytes" and len(r.content) == 256 * 40
        r = c.get(url, headers={"Range": "bytes=100-199"})
        assert r.status_code == 206 and r.content == (bytes(range(256)) * 40)[100:200]
        assert r.headers["content-range"] == f"bytes 100-199/{256 * 40}"
        r = c.get(f"/jobs/{done}/files/lora/pytorch_lora_weights.safetensors")
        assert r.status_code == 200 and r.content == b"lora"
        assert "attachment" in r.headers["content-disposition"]
        (out / "checkpoints" / "step_00001").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "step_00001" / "lora.safetensors").write_bytes(b"ck")
        assert c.get(f"/jobs/{done}/files/checkpoints/step_00001/lora.safetensors"
                     ).content == b"ck"
        outside = world.root / "secret.txt"
        outside.write_text("secret")
        (out / "samples" / "link.mp4").symlink_to(outside)
        (out / "samples" / "inside.mp4").symlink_to(out / "samples" / "step_000002_0.mp4")
        refused = ["samples/../pytorch_lora_weights.safetensors", "samples/%2e%2e/secret.txt",
                   "samples/..%2F..%2Fsecret.txt", f"samples/{outside}", "samples/link.mp4",
                   "samples//etc/passwd", "lora/../../secret.txt", "lora/.ltxq-job",
                   "other/step_000002_0.mp4", "checkpoints/step_00001",
                   "checkpoints/step_00001/%2e%2e/%2e%2e/samples/step_000002_0.mp4",
                   "samples/missing.mp4", "lora/checkpoints"]
        for name in refused:
            assert c.get(f"/jobs/{done}/files/{name}").status_code == 404, name
        assert c.get(f"/jobs/{done}/files/samples/inside.mp4").status_code == 200
        assert c.get("/jobs/999/files/samples/step_000002_0.mp4").status_code == 404


# --- the new-job form ------------------------------------------------------------------------


def test_form_has_every_config_key_with_defaults_and_help(world):
    from ltxq.config import describe_fields

    with client(world) as c:
        text = c.get("/submit").text
    for key, _, _, _ in describe_fields():
        if key != "data.dataset":
            assert f'name="{key}"' in text, key
    assert 'value="32"' in text and "LoRA rank." in text  # lora.rank's default and help
    assert '<option value="ds"' in text


def test_form_grid_queues_six_jobs(world):
    before = len([j for j in world.status() if j["id"] is not None])
    with client(world) as c:
        r = c.post("/submit", data={"csrf": csrf(c)["X-CSRF-Token"], "dataset": "ds",
                                    "lora.rank": "8,16,32",
                                    "optimization.learning_rate": "1e-4,2e-4",
                                    "optimization.steps": "3", "model.source": "tiny-random"},
                   follow_redirects=False)
    assert r.status_code == 303
    jobs = [j for j in world.status() if j["id"] is not None][before:]
    assert len(jobs) == 6
    assert {j["dataset"] for j in jobs} == {str(world.datasets / "ds")}
    names = {j["name"] for j in jobs}
    assert "ds rank=16 learning_rate=0.0002" in names


def test_form_errors_are_the_cli_messages_next_to_the_field(world):
    before = len(world.status())
    with client(world) as c:
        token = csrf(c)["X-CSRF-Token"]
        r = c.post("/submit", data={"csrf": token, "dataset": "ds", "lora.rank": "0"})
        assert r.status_code == 422
        assert 'data-key="lora.rank"' in r.text and "must be &gt;= 1, got 0" in r.text
        assert 'value="0"' in r.text  # what the person typed stays
        r = c.post("/submit", data={"csrf": token, "dataset": "../etc"})
        assert r.status_code == 422 and 'data-key="data.dataset"' in r.text
        r = c.post("/submit", data={"csrf": token,
                                    "toml": f'[data]\ndataset = "{world.dataset}"\n'})
        assert r.status_code == 422 and "pick a dataset from the list" in r.text
        r = c.post("/submit", data={"csrf": token, "dataset": "ds", "output.root": "/tmp/x"})
        assert r.status_code == 422 and 'data-key="output.root"' in r.text
        r = c.post("/submit", data={"csrf": token, "dataset": "ds",
                                    "toml": '[job]\non_finish = "touch /tmp/pwned"\n'})
        assert r.status_code == 422 and "shell commands" in r.text
        r = c.post("/submit", data={"csrf": token, "toml": "not [toml"})
        assert r.status_code == 422 and 'data-key="toml"' in r.text
    assert len(world.status()) == before


def test_form_reads_lists_one_item_a_line_typed_by_the_key(world):
    from ltxq.web.form import read_form, sections

    overrides, sweeps = read_form({"validation.prompts": "a cat\r\n\r\n 8 dogs \n",
                                   "lora.target_modules": "to_q\nto_v",
                                   "lora.rank": "16", "optimization.steps": "1500",
                                   "validation.negative_prompt": "blurry, dark"})
    assert overrides == {"validation.prompts": ["a cat", "8 dogs"],
                         "lora.target_modules": ["to_q", "to_v"], "lora.rank": 16,
                         "validation.negative_prompt": "blurry, dark"}  # steps: the default
    assert sweeps == []
    list_ints = [f for _, fs in sections() for f in fs if f.type == "list[int]"]
    for f in list_ints:
        assert read_form({f.key: "1\n2"})[0] == {f.key: [1, 2]}


def test_form_takes_a_pasted_or_uploaded_toml(world):
    toml = '[model]\nsource = "tiny-random"\n[data]\ndataset = "datasets/ds"\n' \
           '[optimization]\nsteps = 4\n[job]\nname = "pasted"\n'
    with client(world) as c:
        token = csrf(c)["X-CSRF-Token"]
        r = c.post("/submit", data={"csrf": token, "toml": toml}, follow_redirects=False)
        assert r.status_code == 303
        new = int(r.headers["location"].rsplit("/", 1)[1])
        assert world.job(new)["name"] == "pasted" and world.job(new)["total_steps"] == 4
        r = c.post("/submit", data={"csrf": token},
                   files={"toml_file": ("job.toml", toml.encode(), "application/toml")},
                   follow_redirects=False)
        assert r.status_code == 303


def test_cli_submit_sweep_prints_the_grid_ids(env):
    env.config(steps=1)
    p = env.run("submit", "job.toml", "--sweep", "lora.rank=8,16,32",
                "--sweep", "optimization.learning_rate=1e-4,2e-4")
    ids = [int(x) for x in p.stdout.split()]
    assert len(ids) == 6
    jobs = env.status()
    assert sorted(json.dumps([j["name"] for j in jobs])) and len({j["name"] for j in jobs}) == 6
    bad = env.run("submit", "job.toml", "--sweep", "lora.rank=8,0", check=False)
    assert bad.returncode == 2 and "lora.rank" in bad.stderr
    assert len(env.status()) == 6  # nothing of a bad grid is queued
    assert env.run("submit", "job.toml", "--sweep", "lora.rank", check=False).returncode == 2
    long = env.run("submit", "job.toml", "--name", "n" * 195, "--sweep", "lora.rank=8,16",
                   check=False)
    assert long.returncode == 2 and "job.name" in long.stderr


# --- datasets --------------------------------------------------------------------------------


def test_datasets_create_upload_caption(world):
    with client(world) as c:
        h = csrf(c)
        r = c.post("/datasets", data={"name": "new set"}, headers=h, follow_redirects=False)
        assert r.status_code == 303 and (world.datasets / "new set").is_dir()
        assert c.post("/datasets", data={"name": "../up"}, headers=h).status_code == 400
        assert c.post("/datasets", data={"name": "new set"}, headers=h).status_code == 400
        files = [("clips", ("../../evil.mp4", b"v1", "video/mp4")),
                 ("clips", ("b c.webm", b"v2", "video/webm")),
                 ("clips", ("run.sh", b"#!/bin/sh", "text/plain"))]
        r = c.post("/datasets/new set/upload", files=files, headers={**h, "HX-Request": "1"})
        assert r.status_code == 200 and "uploaded 2" in r.text and "run.sh" in r.text
        assert sorted(os.listdir(world.datasets / "new set")) == ["b c.webm", "evil.mp4"]
        assert not (world.root / "evil.mp4").exists()
        assert c.post("/datasets/..%2F/upload", files=files[:1], headers=h).status_code in (
            400, 404)
        r = c.post("/datasets/ds/clips/a.mp4/caption", data={"caption": XSS}, headers=h,
                   follow_redirects=False)
        assert r.status_code == 303
        assert (world.datasets / "ds" / "a.txt").read_text() == XSS + "\n"
        assert XSS not in c.get("/datasets/ds").text
        assert c.post("/datasets/ds/clips/a.txt/caption", data={"caption": "x"},
                      headers=h).status_code == 400
        summary = c.get("/datasets").text
        assert "new set" in summary and "1/1" in summary  # ds: one clip, captioned
        r = c.get("/datasets/ds/clips/a.mp4", headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and len(r.content) == 10
        assert c.get("/datasets/ds/clips/..%2Fsecret.mp4").status_code == 404


def test_dataset_caption_and_preprocess_buttons_queue_jobs(world):
    before = len([j for j in world.status() if j["id"] is not None])
    with client(world) as c:
        h = {**csrf(c), "HX-Request": "1"}
        for kind in ("caption", "preprocess"):
            r = c.post(f"/datasets/ds/jobs/{kind}", data={"model": "tiny-random"}, headers=h)
            assert r.status_code == 200 and f"{kind} job" in r.text, r.text
        assert c.post("/datasets/ds/jobs/rm", headers=h).status_code == 400
        r = c.post("/datasets/ds/jobs/preprocess", data={"resolution": "7x7x7"}, headers=h)
        assert r.status_code == 400 and "resolution" in r.text
        jobs = [j for j in world.status() if j["id"] is not None]
        assert [j["kind"] for j in jobs[before - 1:]][-2:] == ["caption", "preprocess"]
        assert "preprocess ds" in c.get("/datasets/ds").text  # the page lists their progress


# --- metrics files ---------------------------------------------------------------------------


def test_metrics_writer_appends_and_never_records_a_step_twice(tmp_path):
    w = MetricsWriter(tmp_path, clock=lambda: 1000.0)
    for step in (1, 2, 3):
        w.step(step, 1.0 / step, 2e-4, 0.5, 0.1, step * 2)
    with open(tmp_path / METRICS, "a") as f:
        f.write('{"step": 4, "lo')  # a line torn by kill -9
    resumed = MetricsWriter(tmp_path)  # a resume from the checkpoint of step 2
    for step in (3, 4, 5):
        resumed.step(step, 0.1, 2e-4, None, 0.1, step * 2)
    rows, end = read_lines(tmp_path / METRICS, 0)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert set(rows[0]) == {"step", "time", "loss", "lr", "grad_norm", "s_per_step",
                            "samples_seen"}
    assert end == (tmp_path / METRICS).stat().st_size
    w.sample(5, 0, "p", 42, tmp_path / "samples" / "step_000005_0.mp4")
    MetricsWriter(tmp_path).sample(5, 0, "p", 42, tmp_path / "samples" / "step_000005_0.mp4")
    samples, _ = read_lines(tmp_path / SAMPLES, 0)
    assert samples == [{"step": 5, "prompt_index": 0, "prompt": "p", "seed": 42,
                        "path": "samples/step_000005_0.mp4"}]
    w.step(6, float("nan"), 1e-4, None, None, 12)
    assert read_lines(tmp_path / METRICS, end)[0][0]["loss"] is None


def test_read_lines_leaves_a_partial_line_and_downsample_keeps_the_last(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2')
    rows, offset = read_lines(path, 0)
    assert rows == [{"step": 1}] and offset == len('{"step": 1}\n')
    rows = [{"step": i} for i in range(10_000)]
    small = downsample(rows, 100)
    assert len(small) == 100 and small[0]["step"] == 0 and small[-1]["step"] == 9999


# --- events and imports ----------------------------------------------------------------------


def test_one_watcher_pushes_spool_and_log_changes(env):
    env.config(steps=1)
    env.submit("job.toml")
    spool = Spool(env.spool)

    async def scenario() -> list[dict]:
        watcher = Watcher(spool)
        await watcher.start()
        pages = [watcher.subscribe() for _ in range(3)]
        try:
            await asyncio.to_thread(env.submit, "job.toml")
            first = await asyncio.wait_for(pages[0].get(), 5)
            spool.log(1, "step 1/1")
            second = await asyncio.wait_for(pages[1].get(), 5)
            while second["jobs"] != [1]:
                second = await asyncio.wait_for(pages[1].get(), 5)
            return [first, second, await asyncio.wait_for(pages[2].get(), 5)]
        finally:
            await watcher.stop()

    first, second, third = asyncio.run(scenario())
    assert first["queue"] and second == {"queue": True, "jobs": [1]} and third["queue"]


def test_events_stream_is_server_sent_events(world):
    with client(world) as c, c.stream("GET", "/events") as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert next(r.iter_lines()).startswith("retry:")


WEB_STACK = ("starlette", "uvicorn", "jinja2", "multipart", "torch")


@pytest.mark.parametrize("args", [["status"], ["submit", "job.toml"], ["cancel", "1"],
                                  ["web", "--help"]])
def test_quick_commands_never_import_the_web_stack(env, args):
    env.config()
    env.submit("job.toml")
    assert env.modules_loaded(args, WEB_STACK) == []


def test_server_never_imports_torch(world):
    code = ("import sys; from pathlib import Path; from starlette.testclient import TestClient;"
            "from ltxq.web.app import create_app, Settings;"
            f"c = TestClient(create_app(Settings(Path({str(world.spool)!r}), Path('.'))),"
            f" base_url={BASE!r});"
            "[c.get(u) for u in ('/', '/submit', '/datasets', '/jobs/1', '/compare?jobs=1')];"
            "assert 'torch' not in sys.modules; print('ok')")
    p = subprocess.run([sys.executable, "-c", code], cwd=world.root, env=world.env,
                       capture_output=True, text=True, check=False)
    assert p.stdout.strip() == "ok", p.stderr


def test_upload_size_limit(world, monkeypatch):
    from ltxq.web import datasets

    monkeypatch.setattr(datasets, "MAX_UPLOAD_BYTES", 10)
    with client(world) as c:
        r = c.post("/datasets/ds/upload", headers=csrf(c),
                   files=[("clips", ("big.mp4", io.BytesIO(b"x" * 11), "video/mp4"))])
    assert r.status_code == 400 and "larger than" in r.text
    assert not (world.datasets / "ds" / "big.mp4").exists()
    assert os.listdir(world.datasets / ".ltxq-tmp") == []


def test_up_runs_a_daemon_and_the_server_and_ctrl_c_requeues_the_running_job(env):
    import signal
    import socket
    import time

    from conftest import FAKE, wait_for

    slow = env.root / "slow"
    slow.mkdir()
    (slow / "SLOW").write_text("0.2")
    env.config(dataset="slow", steps=500)
    job = env.submit("job.toml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    up = subprocess.Popen([sys.executable, "-m", "ltxq", "up", "--port", str(port)],
                          cwd=env.root, env=dict(env.env, LTXQ_TRAINER=FAKE),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        env.wait_state(job, "running")

        def serving() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                    c.sendall(b"GET /api/jobs HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
                    return b"200 OK" in c.recv(100)
            except OSError:
                return False

        wait_for(serving, 30, "the dashboard")
        time.sleep(0.5)
        up.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = up.communicate(timeout=60)
        assert up.returncode == 0, err
        record = env.job(job)
        assert record["state"] == "pending" and record["attempts"] == 0, (record, err)
        assert not serving()
    finally:
        if up.poll() is None:
            up.kill()


def test_watcher_of_a_spool_made_later_switches_to_inotify(tmp_path):
    spool = Spool(tmp_path / "spool")

    async def scenario() -> tuple[dict, bool]:
        watcher = Watcher(spool)
        await watcher.start()
        page = watcher.subscribe()
        try:
            spool.create()
            event = await asyncio.wait_for(page.get(), 5)
            return event, watcher._inotify is not None or sys.platform != "linux"
        finally:
            await watcher.stop()

    event, watching = asyncio.run(scenario())
    assert event["queue"] and watching


def test_a_server_started_before_its_spool_exists(tmp_path):
    (tmp_path / "datasets" / "ds").mkdir(parents=True)
    spool = tmp_path / "spool"
    app = create_app(Settings(spool, tmp_path / "datasets", base_dir=tmp_path))
    with TestClient(app, base_url=BASE) as c:
        assert "No spool yet" in c.get("/").text
        assert c.get("/api/jobs").json() == []
        assert c.get("/jobs/1").status_code == 404
        assert c.get("/datasets").status_code == 200
        assert c.post("/pause", headers=csrf(c)).status_code in (400, 404)
        assert not spool.exists()  # reading and refused actions make no spool
        r = c.post("/submit", data={"csrf": c.cookies["ltxq_csrf"], "dataset": "ds",
                                    "model.source": "tiny-random"}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/jobs/1"
        assert (spool / "pending").is_dir()


def test_run_again_of_a_done_job_queues_a_fresh_copy(world):
    done = world.ids["done"]
    with client(world) as c:
        r = c.post(f"/jobs/{done}/resume", data={"fresh": "1"},
                   headers={**csrf(c), "HX-Request": "1"})
    assert r.status_code == 200, r.text
    assert world.state(done) == "done"


@pytest.mark.parametrize(("raw", "safe"), [
    ("clip.mp4", "clip.mp4"), ("../../evil.mp4", "evil.mp4"), ("C:\\x\\y.mp4", "y.mp4"),
    (".hidden.mp4", "hidden.mp4"), ("a<b>.mp4", "a_b_.mp4"), ("café.mp4", "cafe.mp4"),
    ("..", None), ("", None), ("/", None), ("a\x00b.mp4", "a_b.mp4"), ("x" * 200, None)])
def test_upload_names_are_sanitised(raw, safe):
    from ltxq.web.datasets import safe_name

    assert safe_name(raw) == safe
