"""The dashboard in a real browser: Debian's headless Chromium, driven through chromedriver
(Selenium), against running services. The browser may reach 127.0.0.1 only (every other
host name fails to resolve), as in a plant without internet. Screenshots at 1920x1080 and
1024x768 go to build/screenshots/ for a person to look at; nothing compares them."""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

from service.store import NewFrame
from service.store_sqlite import SQLiteStore
from training.synth import render_frame

from .conftest import KEYS, REPO, Server, frame_result
from .test_api import jpeg, post
from .test_feedback import counter

pytestmark = pytest.mark.slow

SHOTS = REPO / "build" / "screenshots"
SIZES = ((1920, 1080), (1024, 768))


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:  # scripts/ensure-test-tools.sh installs both
        pytest.fail(
            "chromium and chromedriver are missing: apt-get install chromium chromium-driver"
        )
    return browser, driver


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    binary, driver = chromium()
    options = Options()
    options.binary_location = binary
    for arg in (
        "--headless=new",
        "--no-sandbox",  # as root in a container
        "--disable-dev-shm-usage",
        "--window-size=1920,1080",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(options=options, service=ChromeService(driver))
    d.set_page_load_timeout(30)
    yield d
    d.quit()


def console_errors(d: WebDriver) -> list[str]:
    """What the page logged as errors since the last call (CSP violations included)."""
    return [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]


def screenshots(d: WebDriver, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    for w, h in SIZES:
        d.set_window_size(w, h)
        time.sleep(0.3)  # the layout settles
        d.save_screenshot(str(SHOTS / f"{name}-{w}x{h}.png"))
    d.set_window_size(*SIZES[0])


def wait(d: WebDriver, seconds: float = 10) -> WebDriverWait:
    return WebDriverWait(d, seconds, poll_frequency=0.05)


def open_page(d: WebDriver, srv: Server, fragment: str = "") -> None:
    """Load the page afresh (from another dashboard URL, a new #fragment alone would only
    change the view, later than the next line looks at it)."""
    d.get("about:blank")
    d.get(f"{srv.url}/dashboard{fragment}")
    wait(d).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#system li")))


def posted(srv: Server, seed: int, truck: str = "TRK-UI", headers: dict | None = None) -> dict:
    frame = render_frame(seed, 0, 1280, 720)
    r = post(srv, jpeg(frame.image), {"truck_id": truck}, wait=True, headers=headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_frame_appears_in_the_live_feed_within_2_s_of_its_end(loose_server, browser):
    open_page(browser, loose_server)
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
    frame = posted(loose_server, 40)
    ended = time.monotonic()
    card = f'#feed-list .card[data-frame="{frame["frame_id"]}"]'
    wait(browser, 2).until(ec.presence_of_element_located((By.CSS_SELECTOR, card)))
    assert time.monotonic() - ended <= 2
    text = browser.find_element(By.CSS_SELECTOR, card).text
    assert frame["result"]["verdict"].upper() in text and "TRK-UI" in text
    model = frame["result"]["model"]  # the strip follows the frames
    wait(browser, 3).until(
        ec.text_to_be_present_in_element((By.ID, "system"), f"{model['name']} {model['version']}")
    )
    screenshots(browser, "feed")
    assert console_errors(browser) == []


def test_the_feed_filters_by_verdict_and_camera(loose_server, browser):
    open_page(browser, loose_server)
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#feed-list .card")))
    Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("failed")
    wait(browser).until(lambda d: not d.find_elements(By.CSS_SELECTOR, "#feed-list .card"))
    Select(browser.find_element(By.ID, "filter-verdict")).select_by_value("")
    Select(browser.find_element(By.ID, "filter-camera")).select_by_value("crane-1")
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, "#feed-list .card")))
    assert "0 frames" not in browser.find_element(By.ID, "feed-count").text
    assert console_errors(browser) == []


def test_the_frame_view_shows_the_instances_and_takes_keyboard_judgements(loose_server, browser):
    frame = posted(loose_server, 41)
    instances = frame["result"]["instances"]
    assert len(instances) >= 2, "the loose bundle should find several regions"
    open_page(browser, loose_server, f"#/frames/{frame['frame_id']}")
    rows = wait(browser).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#instances tbody tr") or None
    )
    assert len(rows) == len(instances)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#shapes polygon")) == len(instances)
    model = frame["result"]["model"]
    assert browser.find_element(By.ID, "model").text == f"{model['name']} {model['version']}"
    assert instances[0]["class"].replace("_", " ") in rows[0].text
    # the mask toggles; the selected instance is highlighted on the overlay
    browser.find_element(By.ID, "mask-toggle").click()
    assert "masks-hidden" in browser.find_element(By.CSS_SELECTOR, "figure").get_attribute("class")
    browser.find_element(By.ID, "mask-toggle").click()
    screenshots(browser, "frame")
    Select(browser.find_element(By.ID, "picture")).select_by_value("anomaly")
    figure = browser.find_element(By.CSS_SELECTOR, "figure")
    wait(browser).until(lambda _: "heat" in figure.get_attribute("class"))
    wait(browser).until(
        lambda _: (
            browser.execute_script("return document.querySelector('figure img').naturalWidth") > 0
        )
    )
    screenshots(browser, "heatmap")
    Select(browser.find_element(By.ID, "picture")).select_by_value("")

    # keyboard only: Tab to the first instance row, c confirms, arrow down, f false alarm
    before = counter(
        loose_server,
        "scrapscan_feedback_total",
        label="confirmed",
        **{"class": instances[0]["class"]},
    )
    browser.find_element(By.TAG_NAME, "body").click()
    keys = ActionChains(browser)
    for _ in range(80):
        if browser.switch_to.active_element == rows[0]:
            break
        keys.send_keys(Keys.TAB).perform()
    assert browser.switch_to.active_element == rows[0], "no keyboard path to the instances"
    shapes = browser.find_elements(By.CSS_SELECTOR, "#shapes polygon")
    assert "selected" in shapes[0].get_attribute("class")
    keys.send_keys("c").perform()
    first_judged = "#instances tbody tr:nth-child(1) .judged"
    wait(browser).until(
        ec.text_to_be_present_in_element((By.CSS_SELECTOR, first_judged), "confirmed")
    )  # stored before the next one is sent (two requests in flight may land either way)
    keys.send_keys(Keys.ARROW_DOWN).perform()
    assert browser.switch_to.active_element == rows[1]
    keys.send_keys("f").perform()
    url = f"{loose_server.url}/v1/frames/{frame['frame_id']}/feedback"
    wait(browser).until(lambda _: len(httpx.get(url).json()) == 2)
    stored = httpx.get(url).json()
    assert [(i["instance"], i["label"]) for i in stored] == [(0, "confirmed"), (1, "false_alarm")]
    wait(browser).until(
        ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#instances tbody tr:nth-child(2) .judged"), "false alarm"
        )
    )
    after = counter(
        loose_server,
        "scrapscan_feedback_total",
        label="confirmed",
        **{"class": instances[0]["class"]},
    )
    assert after == before + 1
    assert len(browser.find_elements(By.CSS_SELECTOR, "#feedback-list li")) == 2
    assert console_errors(browser) == []


def drag_box(d: WebDriver) -> WebElement:
    """Drag a box on the overlay after "Mark a missed contaminant"; the form it opens."""
    shapes = wait(d).until(ec.presence_of_element_located((By.ID, "shapes")))
    d.find_element(By.ID, "mark-missed").click()
    drag = ActionChains(d).move_to_element_with_offset(shapes, -100, -60).click_and_hold()
    drag.move_by_offset(120, 80).release().perform()
    return wait(d).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".missed-form")))


def draw_missed(d: WebDriver, cls: str) -> None:
    """Mark a missed contaminant: drag a box on the overlay, name its class, save."""
    form = drag_box(d)
    Select(form.find_element(By.TAG_NAME, "select")).select_by_value(cls)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_a_missed_contaminant_is_drawn_as_a_box_and_asked_about(loose_server, browser):
    frame = posted(loose_server, 42)
    open_page(browser, loose_server, f"#/frames/{frame['frame_id']}")
    form = drag_box(browser)
    # what the bundle's region encoder sees in the box: its nearest descriptions, and the
    # contaminant class it names taken as the class
    box = [int(v) for v in form.text.split(":")[0].removeprefix("Box ").split(", ")]
    form.find_element(By.CSS_SELECTOR, "button.ask").click()
    said = wait(browser).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, ".missed-form .said li") or False
    )
    url = f"{loose_server.url}/v1/frames/{frame['frame_id']}/describe"
    answer = httpx.post(url, json={"box": box}).json()
    assert [li.text.split(" (")[0] for li in said] == [d["text"] for d in answer["descriptions"]]
    chosen = Select(form.find_element(By.TAG_NAME, "select")).first_selected_option
    named = answer["description_class"]
    assert chosen.get_attribute("value") == ("" if named == "normal" else named)
    Select(form.find_element(By.TAG_NAME, "select")).select_by_value("cable")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    url = f"{loose_server.url}/v1/frames/{frame['frame_id']}/feedback"
    wait(browser).until(lambda _: httpx.get(url).json())
    (item,) = httpx.get(url).json()
    width = frame["result"]["image"]["width"]
    assert item["label"] == "missed" and item["class"] == "cable"
    x, _y, w, h = item["box"]
    assert 0 <= x < width and w > 0 and h > 0
    assert console_errors(browser) == []


def test_trucks_list_report_and_decision(loose_server, browser):
    posted(loose_server, 43, truck="TRK-DASH")
    open_page(browser, loose_server, "#/trucks")
    link = wait(browser).until(ec.presence_of_element_located((By.LINK_TEXT, "TRK-DASH")))
    screenshots(browser, "trucks")
    link.click()
    wait(browser).until(ec.presence_of_element_located((By.ID, "truck-classes")))
    Select(browser.find_element(By.ID, "decision")).select_by_value("rejected")
    browser.find_element(By.ID, "decision-comment").send_keys("motor in the load")
    browser.find_element(By.CSS_SELECTOR, "form.decision button").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "decisions"), "rejected"))
    (stored,) = httpx.get(f"{loose_server.url}/v1/trucks/TRK-DASH/decisions").json()
    assert (stored["decision"], stored["comment"]) == ("rejected", "motor in the load")
    screenshots(browser, "truck")
    assert console_errors(browser) == []


def test_the_api_docs_work_without_internet(loose_server, browser):
    browser.get(f"{loose_server.url}/docs")
    wait(browser, 20).until(ec.presence_of_element_located((By.CSS_SELECTOR, ".opblock")))
    assert "/v1/frames/{frame_id}/feedback" in browser.page_source
    screenshots(browser, "docs")
    assert console_errors(browser) == []


def test_a_wrong_key_shows_an_error_and_no_data_and_the_key_stays_in_the_tab(keyed, browser):
    camera = {"Authorization": f"Bearer {KEYS['camera']}"}
    frame = posted(keyed, 44, headers=camera)
    open_page(browser, keyed)
    notice = wait(browser).until(ec.visibility_of_element_located((By.ID, "notice")))
    assert "needs an API key" in notice.text
    assert browser.find_elements(By.CSS_SELECTOR, "#feed-list .card") == []
    browser.find_element(By.ID, "key-input").send_keys("not-a-key-we-know")
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "notice"), "not known"))
    assert browser.find_elements(By.CSS_SELECTOR, "#feed-list .card") == []
    assert "no key" in browser.find_element(By.ID, "system").text
    console_errors(browser)  # the refused requests are logged as failed loads: expected

    browser.find_element(By.ID, "key-input").send_keys(KEYS["dashboard"])
    browser.find_element(By.CSS_SELECTOR, "#key-form button[type=submit]").click()
    card = f'#feed-list .card[data-frame="{frame["frame_id"]}"]'
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, card)))
    assert not browser.find_element(By.ID, "notice").is_displayed()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "system"), "ready"))
    assert KEYS["dashboard"] not in browser.current_url and browser.get_cookies() == []
    assert (
        browser.execute_script("return sessionStorage.getItem('scrapscan.key')")
        == KEYS["dashboard"]
    )
    assert browser.execute_script("return localStorage.length") == 0
    # the dashboard role reads; it may not judge
    open_page(browser, keyed, f"#/frames/{frame['frame_id']}")
    draw_missed(browser, "motor")
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "notice"), "may not"))
    assert (
        httpx.get(f"{keyed.url}/v1/frames/{frame['frame_id']}/feedback", headers=camera).status_code
        == 403
    )
    console_errors(browser)  # the refused POST is logged as a failed load: expected
    screenshots(browser, "keyed-frame")


def test_the_pages_forbid_inline_scripts_and_foreign_sources(loose_server):
    page = httpx.get(f"{loose_server.url}/dashboard")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "default-src 'none'" in csp
    assert "<script>" not in page.text and "http" not in page.text.replace("http-equiv", "")
    asset = httpx.get(f"{loose_server.url}/dashboard/assets/app.js")
    assert asset.status_code == 200 and asset.headers["x-content-type-options"] == "nosniff"
    assert (
        httpx.get(f"{loose_server.url}/", follow_redirects=False).headers["location"]
        == "/dashboard"
    )
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert httpx.get(f"{loose_server.url}/docs/assets/{name}").status_code == 200
    assert "cdn" not in httpx.get(f"{loose_server.url}/docs").text.lower()


def test_thumbnails_are_scaled_overlays(loose_server):
    frame = posted(loose_server, 45)
    overlay = f"{loose_server.url}{frame['links']['overlay']}"
    full = Image.open(io.BytesIO(httpx.get(overlay).content))
    thumb = Image.open(io.BytesIO(httpx.get(overlay, params={"width": 320}).content))
    assert thumb.width == 320 and abs(thumb.height - full.height * 320 / full.width) <= 1
    same = Image.open(io.BytesIO(httpx.get(overlay, params={"width": 4096}).content))
    assert same.size == full.size  # never scaled up
    assert httpx.get(overlay, params={"width": 3}).status_code == 400


def test_the_status_strip_figures(loose_server):
    posted(loose_server, 31)  # at least one frame ended in the last five minutes
    status = httpx.get(f"{loose_server.url}/v1/status").json()
    assert status["ready"] is True and status["not_ready"] is None
    assert status["model"]["name"] == "demo" and status["backlog"] == 0
    assert status["frames_per_minute"] >= 0.2 and status["last_ended"] > time.time() - 600
    assert status["failed_last_hour"] >= 0


def test_a_feed_of_over_a_thousand_frames_stays_paged(loose_server, browser):
    open_page(browser, loose_server)
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
    overlay = jpeg(np.full((90, 160, 3), 80, np.uint8))
    store = SQLiteStore(loose_server.data_dir)  # a second writer, as a busy day would
    try:
        for i in range(1200):
            frame_id = f"{0xFEED0000 + i:032x}"
            store.add(NewFrame(frame_id, f"crane-{i % 4}", f"TRK-{i // 10}", None, b"x", ".jpg"))
            store.complete(frame_id, frame_result([]), {"overlay.jpg": overlay})
    finally:
        store.close()
    # the stream looks at the store again within 15 s when nothing wakes it
    count = browser.find_element(By.ID, "feed-count")
    wait(browser, 40).until(lambda _: int(count.text.split()[0]) >= 1200)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#feed-list .card")) == 50
    browser.find_element(By.ID, "older").click()
    assert "page 2 of" in browser.find_element(By.ID, "feed-page").text
    Select(browser.find_element(By.ID, "filter-camera")).select_by_value("crane-3")
    wait(browser).until(lambda _: int(count.text.split()[0]) >= 300)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#feed-list .card")) == 50
    assert console_errors(browser) == []


def test_the_feed_resumes_after_the_service_restarts(loose_server, browser):
    open_page(browser, loose_server)
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
    before = posted(loose_server, 46)
    card = '#feed-list .card[data-frame="{}"]'
    wait(browser).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, card.format(before["frame_id"])))
    )
    loose_server.stop()  # a deploy: the stream drops, the page retries every 2 s
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "live"), "reconnecting"))
    loose_server.start()
    after = posted(loose_server, 47)
    wait(browser, 15).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, card.format(after["frame_id"])))
    )
    ids = [
        c.get_attribute("data-frame")
        for c in browser.find_elements(By.CSS_SELECTOR, "#feed-list .card")
    ]
    assert ids[:2] == [after["frame_id"], before["frame_id"]]  # resumed after the last event
    assert len(ids) == len(set(ids))  # nothing twice
    console_errors(browser)  # the refused reconnections are logged: expected
