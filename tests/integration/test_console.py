"""The triage console in a real browser (Debian's Chromium driven by Playwright) against
a console fed by a real broker and a running consumer: an incident appears in the queue
live; its page shows the timeline and the explanation; a "false positive" verdict lands
on the feedback topic with the incident's id and moves the precision figure; "suppress
similar" writes a rule the running consumer applies; a request without the token is
refused; a field holding <script> shows as text. Screenshots of each page are written
to ``artifacts/console/`` (``STREAM_ARTIFACTS`` moves it)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from stream import registry
from stream.config import Settings
from stream.console.app import make_app
from stream.console.follower import Follower
from stream.console.store import ConsoleStore
from stream.consumer import service
from stream.generate import generate_flows, training_flows
from stream.kafka.embedded import EmbeddedBroker
from tests.consoleutil import serving
from tests.kafkautil import produce, read_all

pytestmark = pytest.mark.integration

TOKEN = "console-test-token-0123456789"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("STREAM_ARTIFACTS", "artifacts")) / "console"


def _browser() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]'; .ci/run does it)")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium; .ci/run "
                    "does it)")
    return sync_playwright()


def _wait(cond: Any, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_triage_in_the_browser(broker: EmbeddedBroker, tracking_uri: str, unique: str,
                               tmp_path: Path) -> None:
    pw = _browser()
    base_name = "console_" + os.urandom(3).hex()
    registry.train(training_flows("acme", 2000, seed=3), model_name=base_name,
                   uri=tracking_uri, do_promote=True)
    s = Settings(
        bootstrap_servers=broker.bootstrap, input_topic=f"flows-{unique}",
        alert_topic=f"alerts-{unique}", dlq_topic=f"dlq-{unique}", group_id=f"g-{unique}",
        tracking_uri=tracking_uri, model_name=base_name, session_timeout_ms=6000,
        batch_size=500, batch_max_wait_ms=100, reload_interval=2.0,
        incident_topic=f"inc-{unique}", incident_idle=3600.0, incident_window=3600.0,
        entity_alert_topic=f"ent-{unique}", suppression_topic=f"supp-{unique}",
        feedback_topic=f"fb-{unique}", drift_topic=f"drift-{unique}", drift_window=400,
    )
    broker.create_topics([s.input_topic, s.alert_topic, s.dlq_topic, s.feedback_topic,
                          s.drift_topic], partitions=1)
    pipeline = service.build(s)
    consumer = threading.Thread(target=pipeline.run, daemon=True)
    consumer.start()
    store = ConsoleStore(tmp_path / "console.db")
    follower = Follower(store, s.kafka_common(), [s.alert_topic, s.incident_topic,
                                                  s.entity_alert_topic, s.drift_topic])
    follower.start()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        with serving(make_app(store, s, TOKEN)) as base, pw as p:
            browser = p.chromium.launch(executable_path=CHROMIUM,
                                        args=["--no-sandbox", "--disable-gpu"])
            # Without the token: refused, whatever the page.
            anon = browser.new_page()
            for path in ("/", "/quality", "/api/queue"):
                assert anon.goto(base + path).status == 401
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            alerts_seen: list[str] = []
            page.on("dialog", lambda d: (alerts_seen.append(d.message), d.dismiss()))
            page.goto(f"{base}/login?token={TOKEN}")
            assert page.locator("h1").inner_text() == "Queue"
            assert page.locator("#queue tbody tr").count() == 0

            # Traffic arrives while the page is open: the queue fills without a reload.
            events = list(generate_flows(1500, ("acme",), seed=21, attack_rate=0.2))
            evil = "<script>window.__pwned = 1; alert('pwned')</script>"
            # (Exfiltration: what these per-flow features alert on.)
            events = [{**e, "service": evil} if e["label"] == "data_exfiltration" else e
                      for e in events]
            produce(s.bootstrap_servers, s.input_topic, [orjson.dumps(e) for e in events])
            page.wait_for_selector("#queue tbody tr", timeout=90_000)
            _wait(lambda: pipeline.stats.consumed >= len(events), 120, "the events consumed")
            _wait(lambda: page.locator("#queue tbody tr").count() >= 2, 30, "the queue")
            page.screenshot(path=str(ARTIFACTS / "queue.png"))

            # The incident of an exfiltration alert that carries the script: found in the
            # queue by its entity, opened; timeline and explanation drawn.
            query = ("SELECT incident_id FROM alerts WHERE doc LIKE '%__pwned%' AND "
                     "incident_id IS NOT NULL")
            _wait(lambda: store.db.execute(query).fetchone() is not None, 30,
                  "an alert carrying the script")
            (iid,) = store.db.execute(query).fetchone()
            scanner = orjson.loads(store.db.execute(
                "SELECT doc FROM alerts WHERE incident_id = ?", (iid,)).fetchone()[0]
            )["event"]["src_ip"]
            page.fill("#filters input[name=entity]", scanner)
            page.select_option("#filters select[name=status]", "open")
            link = page.locator(f"#queue tbody a[href='/item/incident/{iid}']")
            _wait(lambda: link.count() > 0, 10, "its incident in the queue")
            link.click()
            page.wait_for_selector("#timeline svg")
            assert page.locator("#timeline svg circle.alert").count() >= 2
            assert page.locator("#explanation svg rect.bar").count() >= 1
            page.screenshot(path=str(ARTIFACTS / "incident.png"), full_page=True)
            # The field holding a script is text: shown (its raw record), never run.
            assert page.evaluate(
                "document.querySelector('#events').textContent.includes("
                "'<script>window.__pwned')")
            assert page.evaluate("typeof window.__pwned") == "undefined" and not alerts_seen

            # Precision before any verdict, then a false positive on this incident.
            page.goto(base + "/quality")
            assert page.locator("#quality td.precision").first.inner_text() == "-"
            page.goto(f"{base}/item/incident/{iid}")
            page.select_option("#verdict select[name=verdict]", "false_positive")
            page.fill("#verdict input[name=note]", "our own backup")
            page.click("#verdict button")
            page.wait_for_selector("#said")
            feedback = [orjson.loads(m.value())
                        for m in read_all(s.bootstrap_servers, s.feedback_topic)]
            assert feedback == [{"incident_id": iid, "verdict": "false_positive",
                                 "note": "our own backup", "analyst": "console",
                                 "tenant_id": "acme"}]
            page.goto(base + "/quality")
            assert page.locator("#quality td.precision").first.inner_text() == "0.00"
            assert page.locator("#rates svg polyline.rate").count() >= 1
            assert page.locator("#raised svg polyline.rate").count() >= 1
            assert page.locator("#histogram svg rect.bin").count() >= 1
            # Drift over time from the consumer's snapshots (a window of 400 events: a
            # snapshot every 200), and the last window's scores against training's.
            _wait(lambda: store.latest_drift("acme") is not None, 30, "drift snapshots")
            page.goto(base + "/quality")
            assert page.locator("#drift svg polyline.psi").count() >= 2  # scores, an input
            assert page.locator("#drift svg circle").count() >= 2 * 3
            assert page.locator("#shift svg rect.live").count() >= 5
            assert page.locator("#shift svg rect.training").count() >= 5
            page.screenshot(path=str(ARTIFACTS / "quality.png"), full_page=True)

            # Suppress similar: the prefilled rule, written, applied by the consumer.
            page.goto(f"{base}/item/incident/{iid}")
            page.click("#suppress-similar")
            assert page.input_value("#rule input[name=src]") == scanner
            # Widened to the host (an analyst edits the proposal before writing it).
            for name in ("port", "proto", "feature"):
                page.fill(f"#rule input[name={name}]", "")
            page.fill("#rule input[name=reason]", "our own backup")
            page.screenshot(path=str(ARTIFACTS / "suppress.png"), full_page=True)
            page.click("#rule button")
            page.wait_for_selector("#timeline svg")
            follower_rules = pipeline.suppressions
            assert follower_rules is not None
            _wait(lambda: any(r.src is not None and str(r.src.network_address) == scanner
                              for r in follower_rules.rules.rules.values()),
                  s.reload_interval + 5, "the rule at the consumer")
            before = pipeline.stats.suppressed
            again = [e for e in generate_flows(1500, ("acme",), seed=22, attack_rate=0.2)]
            again = [{**e, "src_ip": scanner} if e["label"] == "data_exfiltration" else e
                     for e in again]
            produce(s.bootstrap_servers, s.input_topic, [orjson.dumps(e) for e in again])
            _wait(lambda: pipeline.stats.consumed >= len(events) + len(again), 120,
                  "the second round consumed")
            assert pipeline.stats.suppressed > before
            browser.close()
    finally:
        follower.stop()
        pipeline.stop_event.set()
        consumer.join(timeout=30)
        pipeline.table.stop()
        store.close()
    print(f"\nconsole: incident {iid} of {scanner} seen live, verdict on the feedback topic, "
          f"rule applied ({pipeline.stats.suppressed - before} alerts suppressed after it); "
          f"screenshots in {ARTIFACTS}")


def test_stream_console_serves_with_its_token_only(broker: EmbeddedBroker, unique: str,
                                                    tmp_path: Path) -> None:
    """The command itself: bound to 127.0.0.1, every page refused without the token."""
    import socket
    import subprocess
    import sys
    import urllib.error
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "STREAM_CONSOLE_TOKEN": TOKEN, "KAFKA_BOOTSTRAP_SERVERS":
           broker.bootstrap, "STREAM_ALERT_TOPIC": f"alerts-{unique}"}
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "console", "--port", str(port),
                             "--console-db", str(tmp_path / "c.db")], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        def get(token: str | None) -> int:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/api/queue")
            if token:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return int(r.status)
            except urllib.error.HTTPError as e:
                return int(e.code)
            except OSError:
                return 0

        _wait(lambda: get(TOKEN) == 200, 60, "the console up")
        assert get(None) == 401 and get("not-the-token-at-all") == 401
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in err and TOKEN not in err


def test_the_evaluation_report_renders_every_chart_offline(tracking_uri: str,
                                                           tmp_path: Path) -> None:
    """``stream evaluate --report`` on the demo's traffic: one HTML file whose every chart
    renders in the browser with the network cut off (nothing is fetched from anywhere)."""
    from click.testing import CliRunner

    from stream.cli import main
    from stream.generate import write_jsonl

    pw = _browser()
    base_name = "report_" + os.urandom(3).hex()
    registry.train(training_flows("acme", 3000, seed=4), model_name=base_name,
                   uri=tracking_uri, do_promote=True)
    flows = tmp_path / "demo.jsonl"
    write_jsonl(flows, list(generate_flows(4000, ("acme",), seed=7, attack_rate=0.1)))
    report = tmp_path / "report.html"
    r = CliRunner().invoke(main, ["evaluate", str(flows), "--label-field", "label",
                                  "--model-name", base_name, "--tracking-uri", tracking_uri,
                                  "--report", str(report)])
    assert r.exit_code == 0, r.output
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with pw as p:
        browser = p.chromium.launch(executable_path=CHROMIUM,
                                    args=["--no-sandbox", "--disable-gpu"])
        context = browser.new_context(offline=True)
        asked: list[str] = []
        context.route("**/*", lambda route: (asked.append(route.request.url),
                                             route.continue_() if route.request.url.startswith(
                                                 ("file:", "data:")) else route.abort()))
        page = context.new_page()
        page.goto(report.as_uri())
        images = page.locator("img")
        assert images.count() == 3
        sizes = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, "
                              "i.naturalWidth, i.naturalHeight])")
        assert all(done and w > 100 and h > 100 for _alt, done, w, h in sizes), sizes
        assert {alt for alt, *_ in sizes} == {"ROC curve", "precision-recall curve",
                                              "anomaly histograms per label"}
        assert all(u.startswith(("file:", "data:")) for u in asked), asked
        page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
        browser.close()
