"""The web player (issue 17) in real headless Chromium against a real segued: what a listener
sees and hears, step by step, with a screenshot of each step in tests/artefacts/web_player/.

Two nodes, as two edge hosts behind a load balancer: the laptop's (two serving processes, so the
player's files and the session's commands go through workers too) and the phone's, each with
its own Serf agent and the gossip plugin carrying the session between them. They and one browser
per device are shared by the whole module; the tests run in file
order and each one picks up where the one before left the listener. The figures measured
(seek error, pause latency, hand-over error) are printed and kept in measurements.json.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from conftest import MP3, Node, make_tone, require
from serf import SerfAgent, gossip_table, new_key

ARTEFACTS = Path(__file__).parent / "artefacts" / "web_player"
ORIGIN = "https://player.example.net"
WAV_BYTES_PER_S = 48000 * 2 * 2  # 16-bit stereo at 48 kHz
MEASURED: dict[str, float] = {}


def wait_until(what: str, check: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll `check` until it returns something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s (last: {value!r})")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def artefacts() -> Iterator[Path]:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTEFACTS.glob("*"):
        old.unlink()
    print(f"\nweb player screenshots: {ARTEFACTS}")
    yield ARTEFACTS
    (ARTEFACTS / "measurements.json").write_text(json.dumps(MEASURED, indent=2) + "\n")
    print(f"web player measurements: {json.dumps(MEASURED)}")


@pytest.fixture(scope="module")
def web_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, Node]]:
    """The laptop's node, with two serving processes and CORS for one other origin, and the
    phone's node, a copy of it on another port and Serf agent. Two tracks are packed: a
    five-minute WAV (58 MB: more than a browser buffers ahead, so a seek must ask for a range)
    and a short MP3 for the queue."""
    root = tmp_path_factory.mktemp("web")
    node = Node.init(root / "edge")
    text = node.conf.read_text()
    node.conf.write_text(text.replace(
        "[http]\n", f'[http]\nworkers = 2\ncors_origins = ["{ORIGIN}"]\n', 1))
    wav = make_tone(root / "Waltz for the Web.wav", ["-c:a", "pcm_s16le"], seconds=300)
    mp3 = make_tone(root / "second.mp3", MP3, seconds=20, freq=330, title="Second Song")
    node.pack(wav, mp3)
    shutil.copytree(node.root, root / "edge-b")
    other = Node(root / "edge-b", tracks=dict(node.tracks))
    keys = [new_key()]
    agents = [SerfAgent(root / "serf-a", "serf-a", keys)]
    agents.append(SerfAgent(root / "serf-b", "serf-b", keys, [agents[0].address]))
    for n, agent, name in ((node, agents[0], "edge-a"), (other, agents[1], "edge-b")):
        n.conf.write_text(n.conf.read_text() + gossip_table(agent, name))
    try:
        for agent in agents:
            agent.start()
        node.start()
        other.start()
        wait_until("the worker listening",
                   lambda: len(node.log_events_named("listening")) == 2, timeout=15)
        wait_until("the nodes see each other", lambda: all(
            json.loads(get(n.base + "/v1/status")[2])["health"]["status"] == "ok"
            for n in (node, other)), timeout=15)
        yield node, other
    finally:
        node.stop()
        other.stop()
        for agent in agents:
            agent.stop()


@pytest.fixture(scope="module")
def web_node(web_nodes: tuple[Node, Node]) -> Node:
    """The laptop's node."""
    return web_nodes[0]


@pytest.fixture(scope="module")
def phone_node(web_nodes: tuple[Node, Node]) -> Node:
    """The phone's node: another edge host."""
    return web_nodes[1]


def track(node: Node, suffix: str) -> str:
    return next(t for t, p in node.tracks.items() if p.name.endswith(suffix))


def browser(width: int, height: int, *, phone: bool = False) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = require("chromium", "chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                     f"--window-size={width},{height}"):
        options.add_argument(argument)
    if phone:  # a headless window is never narrower than 500 px: a phone's screen is
        options.add_experimental_option("mobileEmulation", {"deviceMetrics": {
            "width": width, "height": height, "pixelRatio": 2, "touch": False}})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options,
                              service=Service(require("chromedriver", "chromium-driver")))
    driver.set_page_load_timeout(20)
    driver.set_script_timeout(10)
    return driver


@pytest.fixture(scope="module")
def laptop(artefacts: Path) -> Iterator[webdriver.Chrome]:
    driver = browser(1100, 850)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def phone(artefacts: Path) -> Iterator[webdriver.Chrome]:
    """The second device, at a phone's width."""
    driver = browser(390, 844, phone=True)
    yield driver
    driver.quit()


def shoot(driver: webdriver.Chrome, name: str) -> None:
    driver.save_screenshot(str(ARTEFACTS / f"{name}.png"))


def console_errors(driver: webdriver.Chrome) -> list[dict]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def ranges_received(driver: webdriver.Chrome, track_id: str) -> list[tuple[int, int]]:
    """(status, first byte) of each response to `track_id` Chromium received since the last
    call, from its performance log (the node logs a stream only once it ends)."""
    found = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] != "Network.responseReceived":
            continue
        response = message["params"]["response"]
        if f"/v1/tracks/{track_id}?" not in response["url"]:
            continue
        headers = {k.lower(): v for k, v in response["headers"].items()}
        first = re.match(r"bytes (\d+)-", headers.get("content-range", ""))
        found.append((response["status"], int(first.group(1)) if first else 0))
    return found


def audio(driver: webdriver.Chrome) -> dict[str, Any]:
    return driver.execute_script(
        "const a = document.getElementById('audio');"
        "return {time: a.currentTime, paused: a.paused, seeking: a.seeking, src: a.src,"
        "        now: Date.now()};")


def lines(driver: webdriver.Chrome, css: str) -> list[str]:
    """The first line of each element `css` finds, read at one instant (lists are redrawn
    whenever the session changes)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        "  .map((e) => e.innerText.split('\\n')[0]);", css)


def press(driver: webdriver.Chrome, label: str, index: int = 0) -> None:
    """Click the `index`th button named `label`, found afresh if a redraw replaced it."""
    def clicked() -> bool:
        try:
            driver.find_elements(By.CSS_SELECTOR, f"button[aria-label='{label}']")[index].click()
        except (StaleElementReferenceException, IndexError):
            return False
        return True

    wait_until(f"the button {label!r}", clicked)


def text(driver: webdriver.Chrome, element_id: str) -> str:
    return driver.find_element(By.ID, element_id).text


def keys(driver: webdriver.Chrome, *typed: str) -> None:
    """Keys sent to whatever has the focus, as a keyboard would: no element is clicked."""
    ActionChains(driver).send_keys(*typed).perform()


def focused(driver: webdriver.Chrome) -> str:
    return driver.execute_script(
        "const e = document.activeElement;"
        "return e.id || e.getAttribute('aria-label') || e.tagName;")


def record_event(driver: webdriver.Chrome, event: str) -> None:
    """Note the time and position of the audio element's next `event`, in the page."""
    driver.execute_script(
        "const a = document.getElementById('audio'); window.seen = window.seen || {};"
        "delete window.seen[arguments[0]];"
        "a.addEventListener(arguments[0], () => {"
        "  window.seen[arguments[0]] = {now: Date.now(), time: a.currentTime}; }, {once: true});",
        event)


def seen(driver: webdriver.Chrome, event: str) -> dict[str, float] | None:
    return driver.execute_script("return (window.seen || {})[arguments[0]] || null;", event)


def get(url: str, headers: dict[str, str] | None = None,
        method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_every_worker_serves_the_page_under_a_strict_policy(web_node: Node) -> None:
    status, headers, body = get(web_node.base + "/")
    assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    policy = headers["Content-Security-Policy"]
    for rule in ("default-src 'none'", "script-src 'self'", "style-src 'self'",
                 "frame-ancestors 'none'", "base-uri 'none'"):
        assert rule in policy
    assert "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert headers["X-Content-Type-Options"] == "nosniff"
    # No inline script or style for the policy to refuse, and nothing from elsewhere.
    page = body.decode()
    assert "<style" not in page and " style=" not in page
    assert all(src.startswith("/player/") for src in re.findall(r'(?:src|href)="([^"#]+)"', page))
    assert re.findall(r"<script[^>]*>\s*</script>", page)  # every script is a file
    status, headers, _ = get(web_node.base + "/player/app.js")
    assert headers["Content-Type"] == "text/javascript; charset=utf-8"
    assert get(web_node.base + "/player/player.css")[1]["Content-Type"] == "text/css; charset=utf-8"
    status, again, _ = get(web_node.base + "/player/app.js", {"If-None-Match": headers["ETag"]})
    assert status == 304 and again["ETag"] == headers["ETag"]
    assert get(web_node.base + "/player/nothing.js")[0] == 404
    assert get(web_node.base + "/player/..%2Fconfig.py")[0] == 404
    # New connections are spread over both processes: both serve the page.
    for _ in range(30):
        get(web_node.base + "/", {"Connection": "close"})
    served_by = {e.get("worker", 0) for e in web_node.log_events_named("request")
                 if e.get("path") == "/"}
    assert served_by == {0, 1}, served_by


def test_other_origins_get_the_api_only_when_listed(web_node: Node) -> None:
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"}
    status, headers, _ = get(web_node.base + "/v1/session/commands", preflight, "OPTIONS")
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "POST"
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    token = web_node.token("carol")
    status, headers, _ = get(web_node.base + "/v1/search?q=waltz",
                             {"Origin": ORIGIN, "Authorization": f"Bearer {token}"})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Content-Range" in headers["Access-Control-Expose-Headers"]
    stranger = {**preflight, "Origin": "https://evil.example"}
    status, headers, _ = get(web_node.base + "/v1/session/commands", stranger, "OPTIONS")
    assert status == 405 and "Access-Control-Allow-Origin" not in headers
    # The player's own files are for its own origin only.
    assert "Access-Control-Allow-Origin" not in get(web_node.base + "/", {"Origin": ORIGIN})[1]


def test_keyboard_alone_signs_in_searches_and_plays(web_node: Node,
                                                    laptop: webdriver.Chrome) -> None:
    token = web_node.token("alice")
    laptop.get(web_node.base + "/")
    wait_until("the sign-in form", lambda: laptop.find_element(By.ID, "token").is_displayed())
    shoot(laptop, "01-sign-in")
    assert focused(laptop) == "token"
    keys(laptop, token, Keys.ENTER)
    wait_until("signed in", lambda: focused(laptop) == "search")
    assert text(laptop, "who") == "Signed in as alice"
    keys(laptop, "walt")
    wait_until("the search result", lambda: "Waltz for the Web" in text(laptop, "results"))
    shoot(laptop, "02-search")
    keys(laptop, Keys.TAB)
    assert focused(laptop) == "Play Waltz for the Web"
    keys(laptop, Keys.ENTER)
    first = wait_until("the audio playing", lambda: (a := audio(laptop))["time"] > 0.2 and a)
    time.sleep(1.0)
    later = audio(laptop)
    assert not later["paused"]
    played = later["time"] - first["time"]
    assert 0.7 < played < 1.5, f"currentTime moved {played:.2f} s in 1 s"
    assert "Playing on this device" in text(laptop, "now-where")
    shoot(laptop, "03-playing")
    assert console_errors(laptop) == []
    assert token not in web_node.log_text()


def test_a_seek_lands_on_its_target_through_a_range_request(web_node: Node,
                                                            laptop: webdriver.Chrome) -> None:
    wav = track(web_node, ".wav")
    ranges_received(laptop, wav)  # those of the first play
    # A place well past what the browser has fetched so far, so that it must ask for it.
    buffered = laptop.execute_script(
        "const b = document.getElementById('audio').buffered;"
        "return b.length ? b.end(b.length - 1) : 0;")
    target = round(buffered + 30)
    assert target < 250, f"the browser fetched {buffered:.0f} s of the track already"
    laptop.execute_script(  # what dragging the slider there does
        "const slider = document.getElementById('position'); slider.value = arguments[0];"
        "slider.dispatchEvent(new Event('input')); slider.dispatchEvent(new Event('change'));",
        target)
    moved_at = laptop.execute_script("return Date.now();")
    wait_until("the seek", lambda: abs(audio(laptop)["time"] - target) < 3
               and not audio(laptop)["seeking"], timeout=5)
    time.sleep(0.5)
    now = audio(laptop)
    error = now["time"] - (target + (now["now"] - moved_at) / 1000)
    MEASURED["seek_error_s"] = round(error, 3)
    print(f"seek to {target:.0f} s: landed {error * 1000:+.0f} ms from the target")
    assert abs(error) < 0.5
    # The browser asked for the part of the track it had not fetched (a 206 from past the
    # start, at or before the target's bytes), not for the whole file again.
    received = ranges_received(laptop, wav)
    print(f"responses to the seeks (status, first byte): {received}")
    assert received and all(status == 206 for status, _ in received), received
    assert any(0 < first <= target * WAV_BYTES_PER_S for _, first in received), received
    shoot(laptop, "04-seeked")


def test_the_queue_takes_adds_moves_and_removals(web_node: Node,
                                                 laptop: webdriver.Chrome) -> None:
    def search(query: str, expected: str) -> None:
        box = laptop.find_element(By.ID, "search")
        box.clear()
        box.send_keys(query)
        wait_until(f"the results for {query!r}",
                   lambda: lines(laptop, "#results li") == [expected])

    def queue() -> list[str]:
        return lines(laptop, "#queue li")

    search("second", "Second Song")
    press(laptop, "Add Second Song to the queue")
    wait_until("one in the queue", lambda: len(queue()) == 1)
    press(laptop, "Add Second Song to the queue")
    search("waltz", "Waltz for the Web")
    press(laptop, "Add Waltz for the Web to the queue")
    wait_until("three in the queue", lambda: len(queue()) == 3)
    assert queue() == ["Second Song", "Second Song", "Waltz for the Web"]
    press(laptop, "Move Waltz for the Web up")
    wait_until("the waltz moved up", lambda: queue()[1] == "Waltz for the Web")
    assert focused(laptop) == "Move Waltz for the Web up"  # the keyboard keeps its place
    press(laptop, "Remove Second Song from the queue", index=1)
    wait_until("one removed", lambda: queue() == ["Second Song", "Waltz for the Web"])
    shoot(laptop, "05-queue")


def test_a_second_device_follows_and_controls_the_first(web_node: Node, phone_node: Node,
                                                       laptop: webdriver.Chrome,
                                                       phone: webdriver.Chrome) -> None:
    token = web_node.token("alice")
    phone.get(f"{phone_node.base}/#token={token}")  # the phone reached another node
    wait_until("the phone signed in", lambda: "Signed in as alice" in text(phone, "who"))
    assert "token" not in phone.current_url  # the link's token left the address bar
    # At a phone's width, nothing sticks out sideways.
    assert phone.execute_script("return window.innerWidth") == 390
    assert phone.execute_script("return document.documentElement.scrollWidth") <= 390
    wait_until("the phone sees the laptop playing",
               lambda: "Playing on Web player" in text(phone, "now-where"))
    assert phone.find_element(By.ID, "play-here").is_displayed()
    assert len(phone.find_elements(By.CSS_SELECTOR, "#devices li")) == 2
    shoot(phone, "06-phone-sees-laptop")

    # Pause on the phone: the laptop's audio stops.
    record_event(laptop, "pause")
    pressed = phone.execute_script("return Date.now();")
    phone.find_element(By.ID, "play-pause").click()
    paused = wait_until("the laptop paused", lambda: seen(laptop, "pause"), timeout=1.5)
    latency = paused["now"] - pressed
    MEASURED["pause_latency_ms"] = latency
    print(f"pause on the phone -> the laptop's audio paused after {latency} ms")
    assert latency < 1000
    assert audio(laptop)["paused"]

    # Play again, then skip to the next in the queue, from the phone.
    phone.find_element(By.ID, "play-pause").click()
    wait_until("the laptop playing again", lambda: not audio(laptop)["paused"], timeout=1.5)
    second = track(web_node, ".mp3")
    phone.find_element(By.ID, "next").click()
    wait_until("the laptop on the next track", lambda: second in audio(laptop)["src"]
               and audio(laptop)["time"] > 0.1, timeout=2)
    shoot(laptop, "07-laptop-after-skip")


def test_play_here_moves_the_music_to_the_phone_in_step(web_node: Node,
                                                         laptop: webdriver.Chrome,
                                                         phone: webdriver.Chrome) -> None:
    time.sleep(1.0)  # a second into the track
    record_event(laptop, "pause")
    phone.find_element(By.ID, "play-here").click()
    stopped = wait_until("the laptop stopped", lambda: seen(laptop, "pause"), timeout=2)
    wait_until("the phone playing", lambda: not audio(phone)["paused"]
               and audio(phone)["time"] > 0, timeout=2)
    time.sleep(1.0)
    now = audio(phone)
    expected = stopped["time"] + (now["now"] - stopped["now"]) / 1000
    error = now["time"] - expected
    MEASURED["play_here_error_s"] = round(error, 3)
    print(f"play here: the phone is {error * 1000:+.0f} ms from where the laptop stopped")
    assert abs(error) < 0.5
    assert audio(laptop)["paused"]
    wait_until("the phone active", lambda: "Playing on this device" in text(phone, "now-where"))
    assert text(phone, "now-track") == "Second Song · Sine Ensemble"
    assert text(phone, "time").endswith("/ 0:20")
    assert "Playing on Web player" in text(laptop, "now-where")
    shoot(phone, "08-phone-playing")
    shoot(laptop, "09-laptop-after-handover")
    assert console_errors(phone) == [] and console_errors(laptop) == []
