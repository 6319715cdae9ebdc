"""The web demo as a person meets it: ``python -m local.bin.demo`` served as its own process, driven by a real
headless Chromium.  Uploading a wav and pressing the button must put on the page exactly what
:func:`local.eval.infer.infer_file` says about that file in this process (label, every class' probability,
the reasoning text, the segment row), and a corrupt or silent file must show the same error infer_file gives,
never a trace.  Only a browser catches what the Python side cannot: the upload path through Gradio's
frontend, the components' rendering, a page that never loads offline.

Selenium drives Debian's ``chromium`` through its ``chromium-driver``: both come from one source package, so
driver and browser always match, and nothing is downloaded (Playwright needs its own pinned browser build).
``EMOREASON_ARTIFACTS`` gets the screenshot (else the test's tmp dir); ``EMOREASON_UPDATE_SCREENSHOT=1`` also
writes docs/demo.png, the README's picture.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("gradio", reason="the demo extra is not installed: pip install -e '.[demo]'")
pytest.importorskip("selenium", reason="the demo extra is not installed: pip install -e '.[demo]' (selenium)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from local.data.audio import write_wav  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = os.environ.get("EMOREASON_CHROMIUM") or next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = os.environ.get("EMOREASON_CHROMEDRIVER") or shutil.which("chromedriver")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(240),
    pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER),
                       reason="no chromium + chromedriver on PATH: tools/install.sh --with-demo "
                              "(apt-get install chromium chromium-driver)"),
]
WAIT = 60  # seconds for any one thing on the page; CPU inference of the tiny model takes well under one


def tone(path: Path, seconds: float = 1.5, freq: float = 180.0, amp: float = 0.3) -> Path:
    t = np.arange(int(16000 * seconds)) / 16000
    write_wav(path, (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(url, model dir, work dir): the demo on a port it picked itself, run from the work dir so the page
    names the model ``tiny/model`` rather than a tmp path (the screenshot goes in the README)."""
    from tests.helpers.tiny_model import tiny_model_dir
    work = tmp_path_factory.mktemp("demo")
    model = tiny_model_dir(work / "tiny", steps=30)  # a few steps: the reasoning text has words
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
           "GRADIO_ANALYTICS_ENABLED": "False"}
    proc = subprocess.Popen([sys.executable, "-m", "local.bin.demo", "--model", "tiny/model", "--device", "cpu",
                             "--port", "0"], cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found = threading.Event()

    def read():  # keeps draining the pipe after the URL so the server never blocks on a full one
        for line in proc.stdout:
            lines.append(line)
            if re.search(r"running on http://\S+", line):
                found.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        deadline = time.monotonic() + WAIT
        while not found.wait(0.2):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("the demo did not print its URL:\n" + "".join(lines))
        url = re.search(r"running on (http://\S+)", "".join(lines)).group(1)
        yield url, model, work
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        options.add_argument(arg)  # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


def submit(driver, url: str, path: Path) -> None:
    """A fresh page, the file uploaded, the button pressed, the run finished."""
    driver.get(url)
    wait = WebDriverWait(driver, WAIT)
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audio input[type=file]"))
    driver.find_element(By.CSS_SELECTOR, "#audio input[type=file]").send_keys(str(path))
    # The upload is done once the component links the server's copy; pressing earlier sends no audio.
    wait.until(lambda d: any(path.name in (a.get_attribute("href") or "")
                             for a in d.find_elements(By.CSS_SELECTOR, "#audio a[download]")))
    driver.find_element(By.ID, "run").click()
    # Not just any text: while the run is pending, Gradio's progress timer is text inside the same element.
    wait.until(lambda d: re.match(r"Error: |\S+: \d+ segments?, ", d.find_element(By.ID, "status").text))


def page_result(driver) -> dict:
    value = lambda css: driver.find_element(By.CSS_SELECTOR, css).get_property("value")  # noqa: E731
    rows = driver.find_elements(By.CSS_SELECTOR, "#segments .virtual-row")  # Gradio 6's table: a virtual list
    return {"label": value("#emotion textarea, #emotion input"),
            "text": value("#reasoning textarea"),
            "dist": {m.get_attribute("aria-label"): float(m.get_property("value"))
                     for m in driver.find_elements(By.CSS_SELECTOR, "#dist meter")},
            "rows": [[c.text for c in r.find_elements(By.CSS_SELECTOR, ".body-cell")] for r in rows],
            "status": driver.find_element(By.ID, "status").text}


def save_screenshot(driver, tmp_path: Path) -> Path:
    height, bars = driver.execute_script("return [document.documentElement.scrollHeight, "
                                         "window.outerHeight - window.innerHeight]")
    driver.set_window_size(1280, height + bars)  # the whole page, table included: the window counts its bars
    out = Path(os.environ.get("EMOREASON_ARTIFACTS") or tmp_path)
    out.mkdir(parents=True, exist_ok=True)
    shot = out / "demo.png"
    driver.save_screenshot(str(shot))
    if os.environ.get("EMOREASON_UPDATE_SCREENSHOT") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "demo.png")
    driver.set_window_size(1280, 1000)
    return shot


@pytest.fixture(scope="module")
def predictor(served):
    from local.eval.predictors import load_predictor
    return load_predictor(str(served[1]), device="cpu")


def test_page_shows_what_infer_file_says(served, browser, predictor, tmp_path):
    from local.eval.infer import infer_file
    url, _, _ = served
    wav = tone(tmp_path / "speech.wav")
    [want] = infer_file(predictor, str(wav))
    assert "error" not in want, want
    submit(browser, url, wav)
    got = page_result(browser)
    assert got["label"] == want["label"]
    assert got["text"] == want["text"]
    assert set(got["dist"]) == set(predictor.labels) == set(want["dist"])
    assert got["dist"] == pytest.approx(want["dist"], abs=1e-6)
    assert len(got["rows"]) == 1
    start, end, label, top, text = got["rows"][0]
    assert (float(start), float(end), label) == (want["start"], want["end"], want["label"])
    assert float(top) == pytest.approx(max(want["dist"].values()), abs=1e-3)
    assert text == " ".join(want["text"].split())
    assert "speech.wav: 1 segment" in got["status"] and "Error" not in got["status"]
    shot = save_screenshot(browser, tmp_path)
    assert shot.stat().st_size > 10_000


@pytest.mark.parametrize("kind", ["corrupt", "silent"])
def test_bad_input_is_a_message_on_the_page(served, browser, predictor, tmp_path, kind):
    from local.eval.infer import infer_file
    url, _, _ = served
    path = tmp_path / f"{kind}.wav"
    if kind == "corrupt":
        path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + os.urandom(200))
    else:
        tone(path, amp=0.0)
    [want] = infer_file(predictor, str(path))
    submit(browser, url, path)
    got = page_result(browser)
    assert got["status"] == "Error: " + want["error"].replace(str(path), path.name)
    assert "Traceback" not in browser.page_source
    assert got["label"] == "" and got["text"] == "" and got["dist"] == {} and got["rows"] == []


def test_long_audio_is_one_row_per_utterance(served, browser, predictor, tmp_path):
    from tests.helpers.long_recording import have_espeak, long_recording
    from local.bin.demo import overall
    from local.eval.infer import infer_file
    if not have_espeak():
        pytest.skip("espeak-ng is not installed (tools/install.sh installs it)")
    url, _, _ = served
    wav, _ = long_recording(seconds=40.0)  # over the 30 s the model hears at once: cut by voice activity
    path = tmp_path / "long.wav"
    write_wav(path, wav)
    want = infer_file(predictor, str(path))
    assert len(want) > 1 and not any("error" in r for r in want), want
    submit(browser, url, path)
    got = page_result(browser)
    assert [[float(s), float(e), lab, float(p), t] for s, e, lab, p, t in got["rows"]] == [
        [pytest.approx(r["start"], abs=0.01), pytest.approx(r["end"], abs=0.01), r["label"],
         pytest.approx(max(r["dist"].values()), abs=1e-3), " ".join(r["text"].split())] for r in want]
    label, dist, _ = overall(want)
    assert got["label"] == label and got["dist"] == pytest.approx(dist, abs=1e-6)
    assert f"long.wav: {len(want)} segments" in got["status"]
