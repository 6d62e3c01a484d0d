"""The HTTP API over replicas on Ray Serve: a local Ray cluster on 127.0.0.1, two CPU replicas of a tiny model.

One cluster for the module (it takes ~15 s to start and deploy); every test talks to it through Serve's HTTP
proxy with ordinary clients. The tiny checkpoint's EOS logit is zeroed, so a request runs exactly its
``max_new_tokens`` steps: the tests choose how long a request holds its replica.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

import soundfile as sf  # noqa: E402
from openai import OpenAI  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from faster_dia.cli import main as cli_main  # noqa: E402
from faster_dia.server import ray_serve  # noqa: E402
from faster_dia.testing import write_tiny_checkpoint  # noqa: E402

WAIT = 90.0  # bound on anything a test waits for; the machine may be shared and slow
MAX_BATCH = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-serve")
    model = write_tiny_checkpoint("dia-1.6b-0626", root / "model", eos_logit_scale=0.0)
    codec = write_tiny_checkpoint("dac", root / "dac")
    options = ray_serve.ServerOptions(
        models=[{"model": str(model), "options": {"codec": str(codec), "device": "cpu", "max_batch": MAX_BATCH}}],
        voices=str(root / "voices"), data_dir=str(root / "data"))
    # Ray's session files (logs, sockets, spilled objects) go to a short temporary path removed afterwards
    # (unix socket paths are limited to ~100 bytes); the proxy takes faster-dia's middleware from its
    # environment, inherited from this process.
    temp = tempfile.mkdtemp(prefix="fdray")
    env = {"RAY_USAGE_STATS_ENABLED": "0", ray_serve.PROXY_CALLBACK_ENV: ray_serve.PROXY_CALLBACK,
           # Replicas and handles report their load often, so autoscaling decides within a second.
           "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
           "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.25",
           # Ray's metrics agent exports what replicas record within a second.
           "RAY_metrics_report_interval_ms": "1000"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    port = _free_port()
    try:
        ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, num_cpus=4, _temp_dir=temp,
                 log_to_driver=False, logging_level="ERROR")
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy(options, ray_serve.deployment_options(max_batch=MAX_BATCH, replicas=2))
        yield {"url": f"http://127.0.0.1:{port}", "options": options}
    finally:
        if ray.is_initialized():  # (serve.shutdown would start a cluster to shut down)
            serve.shutdown()
            ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def deploy(options, deployment) -> None:
    app = ray_serve._deployment().options(**deployment).bind(ray_serve.asdict(options))
    serve.run(app, name=ray_serve.APP_NAME, route_prefix="/")


def running_replicas() -> int:
    status = serve.status().applications[ray_serve.APP_NAME].deployments[ray_serve.DEPLOYMENT]
    return status.replica_states.get("RUNNING", 0)


def speech(i: int, **extra) -> dict:
    return {"model": "tts-1", "voice": "alloy", "input": f"[S1] Request number {i}.", "seed": i, **extra}


def pcm_bytes(max_new_tokens: int) -> int:
    """Bytes of OpenAI's ``pcm`` (16-bit, 24 kHz) for a request of ``max_new_tokens`` steps of the tiny model (the
    EOS tail takes 16 of them; a frame is 512 samples at 44.1 kHz)."""
    return 2 * round((max_new_tokens - 16) * 512 * 24000 / 44100)


def decoder_steps(url: str) -> dict[str, float]:
    """Decoder steps run by each replica, from its /metrics (reached through the proxy until both answered)."""
    steps: dict[str, float] = {}
    deadline = time.monotonic() + WAIT
    while len(steps) < 2:
        assert time.monotonic() < deadline, steps
        with ThreadPoolExecutor(4) as pool:
            for text in pool.map(lambda _: httpx.get(f"{url}/metrics", timeout=WAIT).text, range(4)):
                for line in text.splitlines():
                    if line.startswith("faster_dia_decoder_steps_total{"):
                        replica = line.split('replica="', 1)[1].split('"', 1)[0]
                        steps[replica] = float(line.rsplit(" ", 1)[1])
    return steps


def test_concurrent_openai_requests_are_spread_over_both_replicas(cluster):
    client = OpenAI(base_url=cluster["url"] + "/v1", api_key="unused", max_retries=0, timeout=WAIT)

    def one(i: int):
        response = client.audio.speech.with_raw_response.create(
            model="tts-1", voice="alloy", input=f"[S1] Request number {i}.", response_format="wav",
            extra_body={"seed": i, "max_new_tokens": 40})
        audio, rate = sf.read(io.BytesIO(response.content))
        return response.headers[ray_serve.REPLICA_HEADER], len(audio), rate

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(one, range(40)))
    replicas = {replica for replica, _, _ in results}
    assert len(replicas) == 2, results
    # 40 steps with the 15-step EOS tail: 24 frames of 512 samples, for every request, on either replica.
    assert {(n, rate) for _, n, rate in results} == {(24 * 512, 44100)}
    # Routing did not defeat batching: 40 requests of 40 steps took far fewer than 40 × 40 decoder steps.
    steps = decoder_steps(cluster["url"])
    assert len(steps) == 2 and sum(steps.values()) <= 40 * 40 / 2, steps
    # The same seed gives the same audio whichever replica answers (each has its own engine and batch).
    with ThreadPoolExecutor(6) as pool:
        same = list(pool.map(lambda _: client.audio.speech.with_raw_response.create(
            model="tts-1", voice="alloy", input="[S1] Same seed.", response_format="pcm",
            extra_body={"seed": 7, "max_new_tokens": 40}), range(6)))
    assert len({r.content for r in same}) == 1
    assert len({r.headers[ray_serve.REPLICA_HEADER] for r in same}) == 2


def test_streams_and_the_websocket_pass_through_the_proxy(cluster):
    url = cluster["url"]
    with httpx.stream("POST", f"{url}/v1/audio/speech", json=speech(1, max_new_tokens=200, response_format="pcm"),
                      timeout=WAIT) as response:
        assert response.status_code == 200
        chunks = [chunk for chunk in response.iter_raw() if chunk]
    assert len(chunks) > 1 and sum(map(len, chunks)) == pcm_bytes(200)

    with httpx.stream("POST", f"{url}/v1/audio/speech", timeout=WAIT,
                      json=speech(2, max_new_tokens=100, stream_format="sse")) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]
    assert events[-1]["type"] == "speech.audio.done" and events[0]["type"] == "speech.audio.delta"

    ws_url = url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    with connect(ws_url, open_timeout=WAIT, max_size=None) as ws:
        ws.send(json.dumps({"type": "session.start", "model": "dia", "seed": 3, "max_new_tokens": 60}))
        ws.send(json.dumps({"type": "text.append", "text": "[S1] One sentence. Another one."}))
        ws.send(json.dumps({"type": "text.end"}))
        audio, kinds = b"", []
        while True:
            message = ws.recv(timeout=WAIT)
            if isinstance(message, bytes):
                audio += message
                continue
            kinds.append(json.loads(message)["type"])
            if kinds[-1] in ("done", "error"):
                break
    assert kinds[-1] == "done" and len(audio) > 0

    # Voices and tasks reach the shared directories; metrics name their replica.
    assert httpx.get(f"{url}/v1/voices", timeout=WAIT).status_code == 200
    metrics = httpx.get(f"{url}/metrics", timeout=WAIT)
    replica = metrics.headers[ray_serve.REPLICA_HEADER]
    assert f'replica="{replica}"' in metrics.text
    assert all(f'replica="{replica}"' in line for line in metrics.text.splitlines()
               if line.startswith("faster_dia_") and "{" in line)


def test_voices_and_task_results_are_shared_by_the_replicas(cluster):
    import uuid

    import numpy as np

    url = cluster["url"]
    clip = io.BytesIO()
    sf.write(clip, 0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000), 16000, format="WAV")
    added = httpx.post(f"{url}/v1/voices", data={"name": "Tone", "transcript": "[S1] Just a tone."},
                       files={"audio": ("tone.wav", clip.getvalue(), "audio/wav")}, timeout=WAIT)
    assert added.status_code == 201, added.text
    # Concurrent, so that the router spreads them by load: both replicas speak in the voice one of them stored.
    with ThreadPoolExecutor(8) as pool:
        spoken = list(pool.map(lambda i: httpx.post(f"{url}/v1/audio/speech", timeout=WAIT,
                                                    json={**speech(i, max_new_tokens=60), "voice": "tone"}), range(8)))
    assert all(r.status_code == 200 for r in spoken), [r.text for r in spoken]
    assert len({r.headers[ray_serve.REPLICA_HEADER] for r in spoken}) == 2

    task = {"taskType": "audioInference", "taskUUID": str(uuid.uuid4()), "model": "dia", "seed": 7,
            "positivePrompt": "[S1] A task.", "outputFormat": "WAV", "settings": {"maxNewTokens": 30}}
    made = httpx.post(f"{url}/v1/tasks", json=[task], timeout=WAIT)
    assert made.status_code == 200, made.text
    (entry,) = made.json()["data"]
    # Any replica serves the file one replica wrote and answers for its task.
    fetched = [httpx.get(entry["audioURL"], timeout=WAIT) for _ in range(6)]
    polled = [httpx.post(f"{url}/v1/tasks", json=[{"taskType": "getResponse", "taskUUID": task["taskUUID"]}],
                         timeout=WAIT) for _ in range(6)]
    assert {r.content for r in fetched} == {fetched[0].content} and fetched[0].status_code == 200
    assert all(r.json()["data"][0]["audioURL"] == entry["audioURL"] for r in polled)
    assert len({r.headers[ray_serve.REPLICA_HEADER] for r in fetched + polled}) == 2


def test_every_replicas_metrics_reach_rays_metrics_export(cluster):
    """Scraping the node's Ray metrics port gets faster-dia's series of both replicas, told apart by replica."""
    (node,) = ray.nodes()
    export = f"http://127.0.0.1:{node['MetricsExportPort']}/metrics"
    with ThreadPoolExecutor(8) as pool:
        served = set(pool.map(lambda i: httpx.post(f"{cluster['url']}/v1/audio/speech", timeout=WAIT,
                                                   json=speech(i, max_new_tokens=60)).headers[ray_serve.REPLICA_HEADER],
                              range(8)))
    assert len(served) == 2
    deadline = time.monotonic() + WAIT
    while True:
        lines = [line for line in httpx.get(export, timeout=WAIT).text.splitlines()
                 if line.startswith("ray_faster_dia_batch_slots{")]
        seen = {replica for replica in served for line in lines if f'replica="{replica}"' in line}
        if seen == served:
            break
        assert time.monotonic() < deadline, lines
        time.sleep(1.0)
    assert all(line.rstrip().endswith(f" {MAX_BATCH}.0") for line in lines), lines


def test_a_replica_that_dies_fails_its_requests_cleanly_and_is_replaced(cluster):
    url = cluster["url"]
    first_audio: dict[int, str] = {}
    results: dict[int, tuple] = {}
    started = threading.Event()

    def one(i: int) -> None:
        sse = i % 2 == 0
        body = speech(i, max_new_tokens=400, **({"stream_format": "sse"} if sse else {"response_format": "pcm"}))
        try:
            with httpx.stream("POST", f"{url}/v1/audio/speech", json=body, timeout=WAIT) as response:
                received = b""
                for chunk in response.iter_raw():
                    if chunk and i not in first_audio and response.status_code == 200:
                        first_audio[i] = response.headers[ray_serve.REPLICA_HEADER]
                        started.set()
                    received += chunk
                results[i] = (response.status_code, sse, received)
        except httpx.TransportError as exc:
            results[i] = ("broken", sse, repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    begun = time.monotonic()
    for thread in threads:
        thread.start()
    assert started.wait(WAIT)
    victim = next(iter(first_audio.values()))
    ray.kill(ray.get_actor(f"SERVE_REPLICA::{ray_serve.APP_NAME}#{ray_serve.DEPLOYMENT}#{victim}",
                           namespace="serve"), no_restart=True)
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads), "a request hung after its replica died"
    assert time.monotonic() - begun < WAIT and len(results) == len(threads)
    failed = 0
    for i, (status, sse, body) in results.items():
        if status == 200:
            if sse:
                last = json.loads(body.decode().strip().split("\n\n")[-1][5:])
                assert last["type"] in ("speech.audio.done", "speech.audio.error")
                if last["type"] == "speech.audio.error":
                    assert last["error"]["code"] == "replica_unavailable" and first_audio.get(i) == victim
                    failed += 1
            else:
                assert len(body) == pcm_bytes(400), "a raw stream ended short without an error"
        elif status == 503:
            assert json.loads(body)["error"]["code"] == "replica_unavailable"
            failed += 1
        else:
            # A raw audio stream cut by its replica's death ends as a broken transfer, never as a short file.
            assert status == "broken" and not sse and first_audio.get(i) == victim, (i, status, body)
            failed += 1
    assert failed >= 1
    # New requests go to the survivor at once; Serve brings the deployment back to two replicas.
    after = httpx.post(f"{url}/v1/audio/speech", json=speech(99, max_new_tokens=30), timeout=WAIT)
    assert after.status_code == 200 and after.headers[ray_serve.REPLICA_HEADER] != victim
    deadline = time.monotonic() + WAIT
    while running_replicas() < 2:
        assert time.monotonic() < deadline, "the dead replica was not replaced"
        time.sleep(0.5)


# The push interval is set by the environment above; the config's own field (deprecated) keeps its default of 10 s.
@pytest.mark.filterwarnings("ignore:`look_back_period_s`:FutureWarning")
def test_autoscaling_adds_a_replica_under_load(cluster):
    deployment = ray_serve.deployment_options(max_batch=MAX_BATCH, min_replicas=1, max_replicas=2,
                                              upscale_delay_s=0.5, downscale_delay_s=600)
    # Decide on a short window so the test sees the load within seconds (the defaults look back 30 s).
    deployment["autoscaling_config"].update(look_back_period_s=1.0)
    deploy(cluster["options"], deployment)
    deadline = time.monotonic() + WAIT
    while running_replicas() != 1:
        assert time.monotonic() < deadline, "autoscaling did not start from one replica"
        time.sleep(0.5)
    url = cluster["url"]
    stop = threading.Event()

    def load(i: int) -> int:
        served = 0
        while not stop.is_set():
            response = httpx.post(f"{url}/v1/audio/speech", json=speech(i, max_new_tokens=200), timeout=WAIT)
            assert response.status_code == 200
            served += 1
        return served

    with ThreadPoolExecutor(4 * MAX_BATCH) as pool:
        futures = [pool.submit(load, i) for i in range(4 * MAX_BATCH)]
        try:
            while running_replicas() < 2:
                assert time.monotonic() < deadline, "autoscaling did not add a replica under load"
                time.sleep(0.25)
        finally:
            stop.set()
        assert all(f.result() >= 1 for f in futures)


def test_config_file_is_a_valid_serve_config(tmp_path, capsys):
    from ray.serve.schema import ServeDeploySchema

    out = tmp_path / "serve.yaml"
    assert cli_main(["ray-config", "--model", "nari-labs/Dia2-2B", "--min-replicas", "1", "--max-replicas", "3",
                     "--gpus-per-replica", "1", "--voices-dir", "/mnt/voices", "--data-dir", "/mnt/data",
                     "--database", "postgresql://faster-dia@db/faster-dia", "-o", str(out)]) == 0
    import yaml

    config = ServeDeploySchema.model_validate(yaml.safe_load(out.read_text()))
    app = config.applications[0]
    assert app.import_path == "faster_dia.server.ray_serve:build_app"
    assert app.args["database"] == "postgresql://faster-dia@db/faster-dia"
    assert app.args["models"] == [{"model": "nari-labs/Dia2-2B", "options": {"max_batch": 16}}]
    (deployment,) = app.deployments
    assert deployment.max_ongoing_requests == 32
    assert deployment.autoscaling_config["max_replicas"] == 3
    assert deployment.autoscaling_config["target_ongoing_requests"] == 16
    assert deployment.ray_actor_options.num_gpus == 1
    # The builder Serve imports takes those args (its options are checked before any replica starts).
    assert ray_serve.build_app(app.args) is not None
    with pytest.raises(Exception, match="Unknown faster-dia application args: colour"):
        ray_serve.build_app({**app.args, "colour": "red"})


def test_serve_ray_checks_the_model_and_the_port_before_starting_ray(tmp_path, capsys):
    assert cli_main(["serve", "--ray", "--model", str(tmp_path / "missing"), "--data-dir", str(tmp_path)]) == 2
    assert "missing" in capsys.readouterr().err
    model = write_tiny_checkpoint("dia-1.6b-0626", tmp_path / "model")
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli_main(["serve", "--ray", "--model", str(model), "--port", str(port),
                         "--data-dir", str(tmp_path)]) == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
