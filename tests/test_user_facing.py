"""What a user touches, on one real stack (nats-server, gateway, learner, replay,
two actors; separate processes): the CLI trains CartPole to 475 with a progress
bar; that checkpoint is evaluated from the CLI and over REST (GIF included);
TensorBoard files and CSV/JSONL hold the REST series; /metrics parses as
Prometheus text; and headless Chromium starts, watches and stops a run from
the dashboard."""
from __future__ import annotations

import asyncio
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.launcher.stack import ROOT, Stack
from shared.client import GatewayClient, GatewayError

pytestmark = pytest.mark.e2e
ARTIFACTS = ROOT / "tests" / "artifacts"
CLI = [sys.executable, "-m", "services.cli"]


def cli(stack: Stack, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """impala-trainer ARGS against the stack's gateway, as a user would run it."""
    env = dict(stack.env(), RL_GATEWAY_URL=stack.gateway_url, RL_API_TOKEN=stack.api_token)
    return subprocess.run([*CLI, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    s = Stack(tmp_path_factory.mktemp("user"))
    s.start_all(actors=2)

    async def ready() -> None:
        async with GatewayClient(s.gateway_url, s.api_token) as gw:
            await gw.wait_ready(120)

    asyncio.run(ready())
    yield s
    s.close()


@pytest.fixture(scope="module")
def solved(stack):
    """`impala-trainer train` on the CartPole preset, followed to the end: the final run view."""
    out = cli(stack, "train", "--env", "CartPole-v1", "--set", "max_seconds=400", "--timeout", "500")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    run_id = out.stdout.split("run ", 1)[1].split()[0]
    assert " steps" in out.stdout and "return" in out.stdout  # the progress bar was drawn
    view = json.loads(cli(stack, "status", run_id).stdout)
    assert view["state"] == "finished" and view["mean_return"] >= 475, view
    return view


def test_cli_lists_and_refuses_clearly(stack, solved):
    listed = cli(stack, "runs")
    assert listed.returncode == 0 and solved["id"] in listed.stdout and "finished" in listed.stdout
    stop = cli(stack, "stop", solved["id"])  # already finished: the gateway's 409, said plainly
    assert stop.returncode == 1 and "HTTP 409" in stop.stderr and "Traceback" not in stop.stderr
    resume = cli(stack, "resume", solved["id"])  # answered by the gateway, whatever it supports
    assert "Traceback" not in resume.stderr
    assert (resume.returncode == 0 and solved["id"] in resume.stdout) or "HTTP 4" in resume.stderr
    missing = cli(stack, "status", "no-such-run")
    assert missing.returncode == 1 and "HTTP 404" in missing.stderr


def gif_frames(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as im:
        return im.n_frames


def test_eval_cli_on_the_solved_checkpoint(stack, solved, tmp_path):
    video = tmp_path / "episode.gif"
    out = cli(stack, "eval", solved["checkpoint"], "--episodes", "10", "--video", str(video))
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout[:out.stdout.rindex("}") + 1])
    assert result["mean_return"] >= 475 and result["episodes"] == 10 and len(result["returns"]) == 10
    assert result["min_return"] <= result["mean_return"] <= result["max_return"] and result["std_return"] >= 0
    # Gymnasium renders after reset and after every step.
    assert video.exists() and gif_frames(video) == result["video_frames"] == result["video_length"] + 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(video, ARTIFACTS / "cartpole-episode.gif")


async def test_eval_over_rest(stack, solved, tmp_path):
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        with pytest.raises(GatewayError) as e:
            await gw.eval("no-such-run")
        assert e.value.status == 404
        job = await gw.eval(solved["id"], episodes=5, greedy=False)
        assert job["state"] == "running"
        job = await gw.wait_eval(solved["id"], job["id"], timeout=300)
        assert job["state"] == "done", job
        # Sampled actions: 5 episodes of a policy whose last 100 (sampled) training
        # episodes averaged 475 can average less (470 was seen), so the bar only
        # says it acted with the trained weights: an untrained policy gets about 20.
        assert job["result"]["mean_return"] >= 300 and job["result"]["episodes"] == 5 and not job["greedy"]
        gif = tmp_path / "rest.gif"
        gif.write_bytes(await gw.download(job["video_url"]))
        assert gif_frames(gif) == job["result"]["video_frames"]
        assert [j["id"] for j in await gw.evals(solved["id"])][-1] == job["id"]


def test_tensorboard_csv_jsonl(stack, solved):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = stack.tb_dir / solved["id"]
    deadline = time.time() + 30
    while not (run_dir / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.5)
    points = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert points[-1].get("final") and points[-1]["agent_steps"] == solved["agent_steps"]
    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"scalars": 0}).Reload()
    tags = set(acc.Tags()["scalars"])
    # The same names as the REST metrics points; nested dicts joined with '/'.
    for tag in ("mean_return", "steps_per_s", "agent_steps", "policy_lag", "updates", "losses/policy_loss",
                "losses/value_loss", "losses/entropy", "losses/total"):
        assert tag in tags, (tag, sorted(tags))
    steps = [e.step for e in acc.Scalars("steps_per_s")]
    assert len(steps) == len(points) and steps == sorted(steps) and steps[-1] == solved["agent_steps"]
    last_return = acc.Scalars("mean_return")[-1]
    assert last_return.value == pytest.approx(solved["mean_return"], rel=1e-5)
    with open(run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert {r["tag"] for r in rows} == tags
    assert sum(r["tag"] == "mean_return" for r in rows) == len(acc.Scalars("mean_return"))


async def test_prometheus_metrics(stack, solved):
    from prometheus_client.parser import text_string_to_metric_families

    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        text = await gw.prometheus()
    families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(name: str, **labels: str) -> float:
        found = [s.value for s in families[name].samples if all(s.labels.get(k) == v for k, v in labels.items())]
        assert found, (name, labels)
        return found[0]

    run = solved["id"]
    assert value("impala_agent_steps", run=run) == solved["agent_steps"]
    assert value("impala_mean_return", run=run) == pytest.approx(solved["mean_return"])
    assert value("impala_run_state", run=run, state="finished") == 1
    assert "impala_steps_per_second" in families and "impala_policy_lag" in families
    assert value("impala_queue_depth", run=run, service="learner", queue="fresh") >= 0
    replay = [s for s in families["impala_queue_depth"].samples if s.labels["service"].startswith("replay-")]
    assert replay and replay[0].value > 0  # the shard's store held fragments
    assert families["impala_dropped"].type == "counter" and families["impala_rejected"].type == "counter"
    assert value("impala_rejected", run=run, service="learner", reason="rejected") == 0
    assert "impala_gateway_events" in families


# ---------------------------------------------------------------- the browser
def chromium_paths() -> tuple[str, str]:
    browser, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (browser and driver):
        pytest.skip("Debian's chromium and chromium-driver are not installed (./dev test installs them as root)")
    return browser, driver


@pytest.fixture
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver = chromium_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--no-first-run", "--window-size=1400,1900", f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    d = webdriver.Chrome(service=Service(driver, log_output=str(tmp_path / "chromedriver.log")), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = predicate()
        if got:
            return got
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def text(driver, css: str) -> str:
    """An element's text, read in one script call: the pages re-render rows while we look."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); return e ? e.textContent : ''", css)


def data_points(driver, canvas_id: str) -> int:
    """How many points a chart drew (chart.js records it on the canvas)."""
    return int(driver.execute_script("return document.getElementById(arguments[0]).dataset.points || '0'", canvas_id))


async def metrics(stack: Stack, run_id: str) -> list[dict]:
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        return await gw.metrics(run_id)


async def evals(stack: Stack, run_id: str) -> list[dict]:
    async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
        return await gw.evals(run_id)


def shot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def test_dashboard_start_watch_stop(stack, solved, browser):
    from selenium.webdriver.common.by import By

    d = browser
    d.get(stack.dashboard_url)  # ?token= is stored in localStorage, then dropped from the address
    row = wait_for(lambda: text(d, f'tr[data-run="{solved["id"]}"]'), 60, "the runs table")
    assert "finished" in row and "CartPole-v1" in row
    wait_for(lambda: d.find_element(By.ID, "max_seconds").get_attribute("value") == "300", 30,
             "the preset to fill the form")
    assert d.find_element(By.ID, "env_id").get_attribute("value") == "CartPole-v1"
    d.find_element(By.ID, "target_return").clear()  # run until stopped
    d.find_element(By.ID, "start-button").click()
    try:
        wait_for(lambda: "/run/run-" in d.current_url, 30, "the new run's page")
    except AssertionError:
        raise AssertionError(f"no run page; the dashboard says: {text(d, '#error')!r}") from None
    run_id = d.current_url.rsplit("/", 1)[1]
    grew = [data_points(d, "return-steps")]

    def growing() -> bool:
        grew.append(data_points(d, "return-steps"))
        return grew[-1] >= 5 and grew[-1] > min(grew)

    wait_for(growing, 180, "the learning curve to grow")
    assert text(d, "#state") == "running"
    d.find_element(By.ID, "stop").click()
    wait_for(lambda: text(d, "#state") == "stopped", 120, "the run to stop")
    shot(d, "dashboard-stopped-run.png")
    d.find_element(By.ID, "resume").click()  # issue 4's endpoint: whatever it answers is shown
    wait_for(lambda: d.find_element(By.ID, "error").is_displayed() or
             text(d, "#state") != "stopped", 30, "the resume answer")

    async def state() -> str:
        async with GatewayClient(stack.gateway_url, stack.api_token) as gw:
            return (await gw.run(run_id))["state"]

    assert asyncio.run(state()) in ("stopped", "pending", "running")
    if asyncio.run(state()) != "stopped":  # resumed: stop it again so the stack is idle
        d.find_element(By.ID, "stop").click()

    # The solved run's page: the curves of a whole run, and an evaluation with its GIF.
    d.get(f"{stack.gateway_url}/run/{solved['id']}")
    curve = sum(p.get("mean_return") is not None for p in asyncio.run(metrics(stack, solved["id"])))
    assert curve >= 2, curve  # a whole run: however fast it solved, more than one point
    wait_for(lambda: data_points(d, "return-steps") == curve, 60, f"the solved run's curve of {curve} points")
    d.find_element(By.ID, "eval-episodes").clear()
    d.find_element(By.ID, "eval-episodes").send_keys("5")
    jobs_before = len(asyncio.run(evals(stack, solved["id"])))
    d.find_element(By.ID, "eval").click()
    newest = '#evals .eval:first-child[data-state="done"]'  # the page lists the newest job first
    count = "return document.querySelectorAll('#evals .eval').length"
    mean = wait_for(lambda: d.execute_script(count) == jobs_before + 1 and text(d, newest + " .eval-mean"), 300,
                    "the eval result")
    assert float(mean.replace(",", "")) >= 475 and "5 greedy episodes" in text(d, newest)
    gif_width = "return document.querySelector('#evals .eval:first-child img').naturalWidth"
    wait_for(lambda: d.execute_script(gif_width) > 0, 30, "the GIF to load")
    d.execute_script("window.scrollTo(0, 0)")
    shot(d, "run-page.png")
    d.get(stack.gateway_url + "/")
    wait_for(lambda: data_points(d, "overview") > 0, 60, "the overview chart")
    shot(d, "dashboard.png")
