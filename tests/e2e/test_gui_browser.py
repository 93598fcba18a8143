"""The GUI in a real headless Chromium against real control planes: one global and two zones over
KDS, a real Envoy with zonemesh-dp in zone-1, and a standalone control plane with loopback admin
off for tokens and paging.

The browser is the system's Chromium (Debian's ``chromium``; scripts/test.sh installs it where it
can), driven by Playwright for Python: never a browser Playwright downloads. Without one the module
is skipped and says why. Every wait is bounded; every process is stopped at the end.

With ``ZONEMESH_GUI_SCREENSHOTS=<dir>`` the tests also save the screenshots docs/gui.md shows
(``ZONEMESH_GUI_SCREENSHOTS=docs/images pytest tests/e2e/test_gui_browser.py``).
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from zonemesh.spawn import python_module
from zonemesh.testing import (
    CHROMIUM_ARGS,
    MTLS_MESH,
    ControlPlaneProcess,
    dp_run_command,
    find_chromium,
    free_port,
    http,
    log_excerpt,
    sidecar_dataplane,
    start_http_app,
    stop_processes,
    wait_until,
    zmctl_ok,
)

pytestmark = [pytest.mark.slow, pytest.mark.browser]

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright for Python is not installed: pip install -e '.[test]'"
)
Page = playwright_api.Page
expect = playwright_api.expect

CHROMIUM = find_chromium()
if CHROMIUM is None:
    pytest.skip(
        "no Chromium to drive the GUI: install Debian's chromium (apt-get install chromium; scripts/test.sh "
        "does so when it runs as root or with sudo) or point ZONEMESH_CHROMIUM at a Chromium binary",
        allow_module_level=True,
    )

WAIT = 20_000  # ms: the longest any on-screen change may take here (an Envoy NACK crosses zone and KDS)
OFFLINE_TIMEOUT = 3.0  # s: kds_zone_offline_timeout's default, which these control planes run with
SCREENSHOTS = os.environ.get("ZONEMESH_GUI_SCREENSHOTS")
TESTDATA = Path(__file__).parent / "testdata" / "gui"

BAD_PATCH = {
    # Valid for the API (a Cluster message), refused by Envoy: a connect_timeout must be greater
    # than 0s, a rule of Envoy's own (tests/e2e/test_zone_envoy.py).
    "type": "MeshProxyPatch",
    "mesh": "default",
    "name": "connect-timeout-zero",
    "spec": {
        "targetRef": {"kind": "Dataplane", "name": "web-1"},
        "default": {
            "appendModifications": [
                {"cluster": {"operation": "Patch", "match": {"name": "backend"}, "value": "connectTimeout: 0s"}}
            ]
        },
    },
}


@dataclass
class Deployment:
    """global + zone-1 (with web-1: a real Envoy) + zone-2, and a standalone CP with loopback admin off."""

    work: Path
    global_cp: ControlPlaneProcess
    zones: dict[str, ControlPlaneProcess]
    standalone: ControlPlaneProcess
    standalone_token: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def gui(self, cp: ControlPlaneProcess, route: str = "/") -> str:
        return f"{cp.api}/gui/#{route}"

    def zmctl(self, cp: ControlPlaneProcess, *args: str) -> str:
        return zmctl_ok(cp.api, *args)

    def apply(self, cp: ControlPlaneProcess, doc: dict[str, Any]) -> None:
        path = self.work / f"{doc['name']}.yaml"
        path.write_text(yaml.safe_dump(doc))
        self.zmctl(cp, "apply", "-f", str(path))

    def logs(self) -> str:
        parts = [log_excerpt(name, cp.logs(), 3000) for name, cp in [("global", self.global_cp), *self.zones.items()]]
        dp_log = self.work / "web-1-dp.log"
        if dp_log.exists():
            parts.append(log_excerpt("web-1 agent", dp_log.read_text(errors="replace"), 3000))
        return "\n".join(parts)


def _zone(work: Path, name: str, kds_port: int, token: str, ca: Path) -> ControlPlaneProcess:
    data_dir = work / name
    data_dir.mkdir(mode=0o700, parents=True)
    (data_dir / "zone.token").write_text(token)
    args = [
        "--mode", "zone", "--zone", name, "--store", "sqlite",
        "--global-address", f"grpcs://127.0.0.1:{kds_port}",
        "--zone-token-file", str(data_dir / "zone.token"), "--global-ca-file", str(ca),
    ]  # fmt: skip
    return ControlPlaneProcess(data_dir, args=args)


def _admin_token(cp: ControlPlaneProcess) -> str:
    """What an operator of a CP with loopback admin off runs on its host: zonemesh-cp admin-token."""
    out = subprocess.run(
        python_module("zonemesh.cp", "admin-token", "--mode", "standalone", "--data-dir", str(cp.data_dir)),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("gui")
    kds_port = free_port()
    global_cp = ControlPlaneProcess(
        work / "global",
        args=["--mode", "global", "--store", "sqlite", "--kds-address", "127.0.0.1", "--kds-port", str(kds_port)],
    )
    standalone = ControlPlaneProcess(work / "standalone", args=["--mode", "standalone", "--no-api-localhost-is-admin"])
    zones: dict[str, ControlPlaneProcess] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        global_cp.start()
        standalone.start(wait=False)
        for name in ("zone-1", "zone-2"):
            status, token = http("POST", global_cp.api + "/tokens/zone", {"zone": name, "validFor": "24h"})
            assert status == 200, token
            zones[name] = _zone(work, name, kds_port, str(token), global_cp.data_dir / "kds-tls.crt").start(wait=False)
        for cp in (standalone, *zones.values()):
            cp.wait_ready()
        deployment = Deployment(work, global_cp, zones, standalone, _admin_token(standalone), procs)
        # mTLS: web-1 gets a workload certificate (its expiry shows) and a key (redacted in its config dump).
        status, body = global_cp.put("/meshes/default", MTLS_MESH)
        assert status in (200, 201), body
        zone1 = zones["zone-1"]
        wait_until(lambda: zone1.get("/meshes/default")[1].get("mtls"), timeout=20, what="the mTLS mesh in zone-1")
        # backend-1: a Dataplane without a proxy, so that web-1 has an outbound cluster to it.
        backend = sidecar_dataplane("backend", 20001, 20002) | {"mesh": "default", "name": "backend-1"}
        status, body = zone1.put("/meshes/default/dataplanes/backend-1", backend)
        assert status in (200, 201), body
        app_port, inbound, outbound = free_port(), free_port(), free_port()
        procs.append(start_http_app("web", app_port))
        token = deployment.zmctl(
            zone1, "generate", "dataplane-token", "--mesh", "default", "--name", "web-1", "--valid-for", "1h"
        ).strip()
        (work / "web-1.token").write_text(token)
        web = sidecar_dataplane("web", inbound, app_port, outbound=[("backend", outbound)])
        cmd = dp_run_command(
            xds_port=zone1.xds_port,
            ca_file=zone1.data_dir / "xds.crt",
            name="web-1",
            mesh="default",
            dataplane=["--dataplane-inline", json.dumps(web)],
            token_file=work / "web-1.token",
            admin_port=free_port(),
            work_dir=work / "web-1",
        )
        with (work / "web-1-dp.log").open("wb") as log:
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))

        def web_acked_at_global() -> bool:
            status, body = global_cp.get("/meshes/default/dataplane-insights/zone-1.web-1")
            subs = body.get("subscriptions") if status == 200 else None
            return bool(subs) and int(subs[-1]["status"]["total"]["responsesAcknowledged"]) > 0

        wait_until(web_acked_at_global, timeout=40, what="web-1's Envoy to ACK its config, as global sees it")
        yield deployment
    except BaseException:
        print(Deployment(work, global_cp, zones, standalone, "", procs).logs())
        raise
    finally:
        stop_processes(procs)
        for cp in (*zones.values(), standalone, global_cp):
            cp.kill()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest, deployment: Deployment) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage); uncaught errors in the GUI's scripts fail the test."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("dialog", lambda dialog: dialog.accept())  # confirm("Disable zone ...?")
    request.node.failure_logs = deployment.logs
    yield tab
    context.close()
    assert not errors, f"the GUI's scripts failed: {errors}"


def screenshot(page: Page | Any, name: str) -> None:
    """The whole page, or one element of it (a Locator)."""
    if SCREENSHOTS:
        Path(SCREENSHOTS).mkdir(parents=True, exist_ok=True)
        path = str(Path(SCREENSHOTS) / f"gui-{name}.png")
        if isinstance(page, Page):
            page.screenshot(path=path, full_page=True)
        else:
            page.screenshot(path=path)


def zone_row(page: Page, zone: str) -> Any:
    return page.locator("table[aria-label='Zone control planes'] tbody tr").filter(
        has=page.get_by_role("link", name=zone, exact=True)
    )


def test_overview_shows_both_zones_online_and_which_control_plane_it_is(page: Page, deployment: Deployment) -> None:
    page.goto(deployment.gui(deployment.global_cp))
    expect(page.locator("#cp-badge")).to_contain_text("Global control plane")
    for zone in ("zone-1", "zone-2"):
        expect(zone_row(page, zone)).to_contain_text("Online", timeout=WAIT)
        expect(zone_row(page, zone)).to_contain_text("0.1.0")
    # proxies per zone, from what each zone reports: web-1 and backend-1 in zone-1
    expect(zone_row(page, "zone-1").locator("td").nth(5)).to_have_text("2", timeout=WAIT)
    expect(page.locator(".stats")).to_contain_text("Sidecar proxies")
    screenshot(page, "overview")

    # A zone's own GUI says it is a zone, and shows its link to global.
    page.goto(deployment.gui(deployment.zones["zone-2"]))
    expect(page.locator("#cp-badge")).to_contain_text("Zone control plane: zone-2")
    expect(page.get_by_text("This is the control plane of zone zone-2")).to_be_visible()
    expect(page.locator("section", has_text="Connection to the global control plane")).to_contain_text(
        "Connected", timeout=WAIT
    )
    expect(page.get_by_role("link", name="Zones", exact=True)).to_have_count(0)
    screenshot(page, "zone-overview")


def test_policy_applied_with_zmctl_appears_without_a_reload(page: Page, deployment: Deployment) -> None:
    page.goto(deployment.gui(deployment.global_cp, "/meshes/default/policies/meshretries"))
    expect(page.locator("table")).to_contain_text("MeshRetry in mesh default", timeout=WAIT)
    page.evaluate("window.__sameDocument = true")  # gone if the page reloads
    retry = {
        "type": "MeshRetry",
        "mesh": "default",
        "name": "retry-backend",
        "spec": {
            "targetRef": {"kind": "Mesh"},
            "to": [{"targetRef": {"kind": "MeshService", "name": "backend"}, "default": {"http": {"numRetries": 7}}}],
        },
    }
    deployment.apply(deployment.global_cp, retry)
    expect(page.get_by_role("link", name="retry-backend")).to_be_visible(timeout=WAIT)
    assert page.evaluate("window.__sameDocument") is True

    page.get_by_role("link", name="retry-backend").click()
    document = page.locator("pre.code")
    expect(document).to_contain_text("numRetries: 7", timeout=WAIT)
    assert yaml.safe_load(document.inner_text())["spec"] == retry["spec"]
    screenshot(page, "policy")
    # A change made with zmctl shows on the open policy too.
    retry["spec"]["to"][0]["default"]["http"]["numRetries"] = 8
    deployment.apply(deployment.global_cp, retry)
    expect(document).to_contain_text("numRetries: 8", timeout=WAIT)


def test_license_warning_appears_before_the_demo_limit_is_reached(page: Page, deployment: Deployment) -> None:
    status, lic = deployment.global_cp.get("/license")
    assert status == 200 and lic["demo"] and lic["allowedDataplaneProxies"] == 5, lic
    active = lic["activeDataplaneProxies"]
    assert active < 4, f"the deployment already has {active} active proxies"
    page.goto(deployment.gui(deployment.global_cp))
    banner = page.locator("#license-warnings")
    expect(banner).to_contain_text("demo license expires in", timeout=WAIT)  # the CP's own warning (< 30 days)
    expect(banner).not_to_contain_text("data plane proxies the demo license allows")

    zone2 = deployment.zones["zone-2"]
    for i in range(4 - active):
        doc = sidecar_dataplane("shop", 21000 + i, 22000 + i) | {"mesh": "default", "name": f"shop-{i + 1}"}
        status, body = zone2.put(f"/meshes/default/dataplanes/shop-{i + 1}", doc)
        assert status in (200, 201), body
    expect(banner).to_contain_text(
        "4 of the 5 data plane proxies the demo license allows are active (room for 1 more)", timeout=WAIT
    )
    expect(banner).to_contain_text("proxies over the limit will be refused")
    card = page.locator("section", has_text="License")
    expect(card.locator("meter")).to_have_attribute("value", "4")
    screenshot(page, "license-warning")


def test_nacked_config_shows_envoys_error_and_the_policy(page: Page, deployment: Deployment) -> None:
    page.goto(deployment.gui(deployment.global_cp, "/meshes/default/dataplanes/zone-1.web-1"))
    expect(page.locator(".facts")).to_contain_text("ACK", timeout=WAIT)
    expect(page.locator(".facts")).to_contain_text("Online")
    deployment.apply(deployment.global_cp, BAD_PATCH)
    try:
        alert = page.locator(".nack-alert")
        expect(alert).to_contain_text("Envoy refused the latest configuration", timeout=WAIT)
        # Envoy's own words, through zone-1's insight and KDS to global
        expect(alert.locator(".nack-summary")).to_contain_text("ConnectTimeout: value must be greater than 0s")
        alert.locator("summary").click()
        expect(alert.locator("pre")).to_contain_text('name: "backend"')  # the refused cluster, as Envoy printed it
        expect(alert.get_by_role("link", name="MeshProxyPatch/connect-timeout-zero")).to_be_visible()
        screenshot(page, "dataplane-nack")
        page.goto(deployment.gui(deployment.global_cp, "/meshes/default/dataplanes"))
        row = page.locator("tbody tr", has=page.get_by_role("link", name="web-1", exact=True))
        expect(row.locator(".nack")).to_contain_text("ConnectTimeout: value must be greater than 0s", timeout=WAIT)
        screenshot(page, "dataplanes")
    finally:
        deployment.zmctl(deployment.global_cp, "delete", "meshproxypatch", BAD_PATCH["name"], "-m", "default")
    # Removing the policy: Envoy takes the next config, and the NACK is history, not the present.
    expect(row.locator(".nack")).to_have_count(0, timeout=WAIT)
    expect(row).to_contain_text("ACK")


def test_dataplane_page_on_its_zone_shows_the_config_dump_redacted_and_the_policies(
    page: Page, deployment: Deployment
) -> None:
    zone1 = deployment.zones["zone-1"]
    page.goto(deployment.gui(zone1, "/meshes/default/dataplanes/web-1"))
    facts = page.locator(".facts")
    expect(facts).to_contain_text("Online", timeout=WAIT)
    expect(facts).to_contain_text("1.40")  # Envoy's version, from its node
    expect(facts.locator("dd").nth(6)).to_contain_text("in ")  # the workload certificate's expiry is ahead

    # Policies that apply: Kuma's _rules where this control plane serves it, else said so.
    status, rules = zone1.get("/meshes/default/dataplanes/web-1/_rules")
    box = page.locator("section.card", has_text="Policies that apply")
    if status == 404:
        expect(box).to_contain_text("not available on this control plane", timeout=WAIT)
    else:
        assert status == 200, rules
        names = {o["name"] for r in rules["rules"] for part in r.get("toRules", []) for o in part["origin"]}
        assert names, rules
        for name in names:
            expect(box).to_contain_text(name, timeout=WAIT)
        screenshot(box, "policies-that-apply")

    page.get_by_role("button", name="Show the Envoy config dump").click()
    dump = page.locator("section.card", has_text="Envoy config dump")
    expect(dump.locator("summary", has_text="secrets")).to_be_visible(timeout=WAIT)
    dump.locator("summary", has_text="secrets").click()
    screenshot(dump, "config-dump")
    for summary in dump.locator("summary").all():
        if "secrets" not in summary.inner_text():  # open already
            summary.click()
    text = dump.inner_text()
    assert "privateKey" in text and "<redacted>" in text, text[:2000]
    # Certificates are shown (base64, as in Envoy's config), private keys nowhere.
    blobs = [base64.b64decode(b) for b in re.findall(r"[A-Za-z0-9+/]{40,}={0,2}", text) if len(b) % 4 == 0]
    assert any(b"BEGIN CERTIFICATE" in blob for blob in blobs)
    assert not any(b"PRIVATE KEY" in blob for blob in blobs) and "PRIVATE KEY" not in text

    # Global generates no config: its page says which zone control plane to ask, for both.
    page.goto(deployment.gui(deployment.global_cp, "/meshes/default/dataplanes/zone-1.web-1"))
    expect(page.locator("section.card", has_text="Policies that apply")).to_contain_text(
        "computed by the zone control plane it is connected to, not by global", timeout=WAIT
    )
    page.get_by_role("button", name="Show the Envoy config dump").click()
    expect(page.locator("section.card", has_text="Envoy config dump")).to_contain_text(
        "ask the API of the control plane of zone 'zone-1'", timeout=WAIT
    )


def test_policies_that_apply_are_drawn_from_kumas_inspect_answers(page: Page, deployment: Deployment) -> None:
    """Kuma 2.14's InspectRules and PoliciesList, as zonemesh's _rules and _policies answer them
    (testdata/gui: recorded from that API for web-1 with a MeshTimeout to backend and a
    MeshProxyPatch): each conf as YAML, to whom it applies, and links to the policies it comes from."""
    rules = json.loads((TESTDATA / "inspect_rules.json").read_text())
    policies = json.loads((TESTDATA / "inspect_policies.json").read_text())
    page.goto(deployment.gui(deployment.zones["zone-1"], "/meshes"))
    expect(page.locator("table")).to_contain_text("default", timeout=WAIT)
    page.evaluate(
        """async ([rules, policies]) => {
            const view = await import("/gui/js/views/dataplane.js");
            const types = (await (await fetch("/_resources")).json()).resources;
            const box = document.createElement("section");
            box.id = "drawn";
            box.append(...[view.renderRules({ types }, rules)].flat(), view.renderProxyPolicies({ types }, policies));
            document.querySelector("main").replaceChildren(box);
        }""",
        [rules, policies],
    )
    drawn = page.locator("#drawn")
    timeout = drawn.locator("section.rule", has=page.get_by_role("heading", name="MeshTimeout"))
    outbound = timeout.locator("table", has_text="Outbound (to)")
    expect(outbound.locator("tbody tr").first).to_contain_text("kuma.io/service=backend")
    expect(outbound.locator("tbody tr").first).to_contain_text("requestTimeout: 7s")
    expect(outbound.locator("tbody tr").nth(1)).to_contain_text("not kuma.io/service=backend")
    link = outbound.get_by_role("link", name="MeshTimeout/backend-timeout")
    expect(link).to_have_attribute("href", "#/meshes/default/policies/meshtimeouts/backend-timeout")
    expect(timeout.locator("table", has_text="Inbound (from): inbound :8080 (web)")).to_contain_text("every client")
    expect(timeout.locator("table", has_text="Inbound rules: inbound :8080 (web)")).to_contain_text("(rule 0)")
    patch = drawn.locator("section.rule", has=page.get_by_role("heading", name="MeshProxyPatch"))
    expect(patch).to_contain_text("Whole proxy")
    expect(patch).to_contain_text("connectTimeout: 3s")
    proxy_wide = drawn.locator("table", has_text="Proxy-wide configuration")
    expect(proxy_wide.get_by_role("link", name="MeshProxyPatch/add-header")).to_have_attribute(
        "href", "#/meshes/default/policies/meshproxypatches/add-header"
    )


def test_zone_is_disabled_and_enabled_from_the_gui(page: Page, deployment: Deployment) -> None:
    # Served from 127.0.0.1 with loopback admin on: the page's same-origin PUTs are the admin's.
    page.goto(deployment.gui(deployment.global_cp, "/zones/zone-2"))
    expect(page.locator(".actions")).to_contain_text("Online", timeout=WAIT)
    # What global sent this zone on its stream, per type, and what the zone ACKed.
    cells = (
        page.locator("table", has_text="Resources refused by zone").locator("tr", has_text="MeshTimeout").locator("td")
    )
    expect(cells.nth(1)).not_to_have_text("0", timeout=WAIT)  # sent to the zone...
    assert cells.nth(2).inner_text() == cells.nth(1).inner_text()  # ...and all ACKed
    screenshot(page, "zone")
    page.get_by_role("button", name="Disable zone zone-2").click()
    expect(page.locator(".actions")).to_contain_text("Disabled", timeout=WAIT)
    status, zone = deployment.global_cp.get("/zones/zone-2")
    assert status == 200 and zone["enabled"] is False, zone
    page.get_by_role("button", name="Enable zone zone-2").click()
    expect(page.locator(".actions")).to_contain_text("Online", timeout=WAIT)
    status, zone = deployment.global_cp.get("/zones/zone-2")
    assert zone["enabled"] is True, zone
    assert zone["labels"] == {"zonemesh.io/origin": "global", "kuma.io/origin": "global"}, zone
    # The disabled stream was closed; the zone reconnected on a new one.
    streams = page.locator("table", has_text="Streams (newest last)").locator("tbody tr")
    expect(streams.last).to_contain_text("open", timeout=WAIT)
    assert streams.count() >= 2


def test_token_login_and_secrets_show_names_only(page: Page, deployment: Deployment) -> None:
    cp = deployment.standalone
    value = "c3VwZXItc2VjcmV0LXZhbHVl"  # base64 of "super-secret-value"
    admin = {"Authorization": f"Bearer {deployment.standalone_token}"}
    secret = {"type": "Secret", "mesh": "default", "name": "db-password", "data": value}
    status, body = http("PUT", cp.api + "/meshes/default/secrets/db-password", secret, headers=admin)
    assert status in (200, 201), body
    page.goto(deployment.gui(cp, "/meshes/default/secrets"))
    # Loopback admin is off here: without a token the API refuses, and the GUI says why and what to do.
    expect(page.locator("#identity")).to_contain_text("Read-only")
    expect(page.locator(".problem")).to_contain_text("admin token", timeout=WAIT)
    page.get_by_role("link", name="Log in with a token").first.click()

    page.get_by_label("User token").fill("not-a-token")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".problem")).to_contain_text("invalid token", timeout=WAIT)
    assert page.evaluate("sessionStorage.length") == 0

    page.get_by_label("User token").fill(deployment.standalone_token)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#identity")).to_contain_text("Signed in as admin", timeout=WAIT)
    table = page.locator("table", has_text="Secrets in mesh default")
    expect(table).to_contain_text("db-password", timeout=WAIT)
    content = page.content()
    assert value not in content and "super-secret-value" not in content
    screenshot(page, "secrets")

    page.get_by_role("button", name="Log out").click()
    expect(page.locator("#identity")).to_contain_text("Read-only", timeout=WAIT)
    assert page.evaluate("sessionStorage.length") == 0

    # A token revoked while the tab uses it: the next poll is refused, and the tab signs out, saying why.
    status, carol = http("POST", cp.api + "/tokens/user", {"name": "carol", "validFor": "1h"}, headers=admin)
    assert status == 200, carol
    page.get_by_role("link", name="Log in with a token").first.click()
    page.get_by_label("User token").fill(carol)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#identity")).to_contain_text("Signed in as carol", timeout=WAIT)
    expect(page.locator("#identity")).to_contain_text("read-only")
    page.goto(deployment.gui(cp, "/meshes/default/policies/meshtimeouts"))
    expect(page.locator("table")).to_contain_text("MeshTimeout in mesh default", timeout=WAIT)
    jti = json.loads(base64.urlsafe_b64decode(carol.split(".")[1] + "=="))["jti"]
    revocations = {
        "type": "GlobalSecret",
        "name": "user-token-revocations",
        "data": base64.b64encode(jti.encode()).decode(),
    }
    status, body = http("PUT", cp.api + "/global-secrets/user-token-revocations", revocations, headers=admin)
    assert status in (200, 201), body
    expect(page.locator(".banner-bad")).to_contain_text(f"token {jti} has been revoked", timeout=WAIT)
    expect(page.locator("#identity")).to_contain_text("Read-only")
    assert page.evaluate("sessionStorage.length") == 0


def shown(first: int, last: int, total: int) -> str:
    return f"{first}\N{EN DASH}{last} of {total} data plane proxies"


def test_dataplanes_are_paged_and_filtered_by_the_api(page: Page, deployment: Deployment) -> None:
    cp = deployment.standalone
    headers = {"Authorization": f"Bearer {deployment.standalone_token}"}
    for i in range(30):
        service = "orders" if i % 3 else "payments"
        doc = sidecar_dataplane(service, 30000 + i, 31000 + i) | {"mesh": "default", "name": f"{service}-{i:02d}"}
        status, body = http("PUT", f"{cp.api}/meshes/default/dataplanes/{doc['name']}", doc, headers=headers)
        assert status in (200, 201), body
    page.goto(deployment.gui(cp, "/meshes/default/dataplanes?size=25"))
    summary = page.locator(".summary")
    expect(summary).to_have_text(shown(1, 25, 30), timeout=WAIT)
    expect(page.locator("tbody tr")).to_have_count(25)
    page.get_by_role("link", name="Next →").click()
    expect(summary).to_have_text(shown(26, 30, 30), timeout=WAIT)
    expect(page.locator("tbody tr")).to_have_count(5)
    page.get_by_role("link", name="← Previous").click()
    expect(summary).to_have_text(shown(1, 25, 30), timeout=WAIT)

    page.get_by_label("Tag").fill("kuma.io/service:payments")
    page.get_by_role("button", name="Filter").click()
    expect(summary).to_have_text(shown(1, 10, 10), timeout=WAIT)
    page.get_by_label("Name").fill("payments-0")
    page.get_by_role("button", name="Filter").click()
    expect(summary).to_have_text(shown(1, 4, 4), timeout=WAIT)  # payments-00, -03, -06, -09


def test_yaml_view_reads_back_as_the_same_document(page: Page, deployment: Deployment) -> None:
    page.goto(deployment.gui(deployment.global_cp, "/meshes"))
    expect(page.locator("table")).to_contain_text("default", timeout=WAIT)
    status, policies = deployment.global_cp.get("/meshtimeouts")
    assert status == 200
    tricky = {
        "strings": [
            *("yes", "No", "on", "~", "null", "1.0", "0x1f", "1_000", "1:20", ".5", "2026-11-24"),
            *("-", "- a", "a: b", "a #b", "#c", "@x", "%y", "*z", "&w", "!t", "|", ">", "'q'", '"d"'),
            *("", " lead", "trail ", "é ü 名", "kuma.io/service", "3s", "tab\there", "x\r\ny"),
            *("line1\nline2\n", "no newline\nat end", "two\n\n", "\nstarts with newline"),
        ],
        "numbers": [0, -1, 1.5, 10**15, 1e-7],
        "bools": [True, False, None],
        "empty": {"list": [], "map": {}},
        "nested": [[1, [2, 3]], [{"a": {"b": []}}], {"": "empty key", "k: v": 1, "yes": "key"}],
    }
    documents = [*policies["items"], tricky]
    rendered = page.evaluate(
        "async (docs) => { const m = await import('/gui/js/yaml.js'); return docs.map((d) => m.toYaml(d)); }", documents
    )
    for document, text in zip(documents, rendered, strict=True):
        assert yaml.safe_load(text) == document, text


def test_what_zones_upload_stays_text_and_no_other_page_can_frame_the_gui(page: Page, deployment: Deployment) -> None:
    # A compromised zone controls what its insights say (Envoy's errors, the policies named) and
    # its KDS status: whatever the GUI draws from them stays text, never markup that runs.
    page.goto(deployment.gui(deployment.global_cp, "/meshes"))
    expect(page.locator("table")).to_contain_text("default", timeout=WAIT)
    hostile = '<img src=x onerror="window.__pwned = 1">'
    drawn = page.evaluate(
        """async (hostile) => {
            const proxy = await import("/gui/js/proxy.js");
            const zones = await import("/gui/js/views/zones.js");
            const view = await import("/gui/js/views/dataplane.js");
            const nack = { lastResponse: "NACK", lastError: hostile, lastErrorPolicies: [hostile] };
            const insight = { subscriptions: [{ status: { clusters: nack } }] };
            const origin = [{ type: hostile, mesh: "default", name: hostile }];
            const box = document.createElement("div");
            box.append(
                proxy.configBadge(insight),
                zones.zonesTable([{ name: hostile, online: true, zoneInsight: { subscriptions: [] } }]),
                zones.kdsStats({ [hostile]: { lastRejection: hostile } }, hostile),
                ...[view.renderRules({ types: [] }, { rules: [{ type: hostile, warnings: [hostile], toRules: [
                    { matchers: [{ key: hostile, value: hostile }], conf: { x: hostile }, origin }] }] })].flat(),
            );
            document.querySelector("main").replaceChildren(box);
            await new Promise((resolve) => setTimeout(resolve, 500));
            return { images: box.querySelectorAll("img").length, text: box.textContent, pwned: window.__pwned ?? null };
        }""",
        hostile,
    )
    assert drawn["images"] == 0 and drawn["pwned"] is None, drawn
    assert drawn["text"].count(hostile) >= 6, drawn["text"]

    # Served from loopback, the GUI is the admin: a page of another origin must not frame it and
    # lend its clicks (frame-ancestors 'none', X-Frame-Options: DENY).
    page.set_content(f'<iframe id="gui" src="{deployment.gui(deployment.global_cp)}"></iframe>')
    page.wait_for_timeout(1500)
    framed = [frame for frame in page.frames if frame is not page.main_frame]
    assert framed and all(not frame.url.startswith(deployment.global_cp.api) for frame in framed), [
        frame.url for frame in framed
    ]


def test_a_killed_zone_turns_offline_on_screen_within_the_offline_timeout(page: Page, deployment: Deployment) -> None:
    # Last in this module: zone-2 does not come back.
    page.goto(deployment.gui(deployment.global_cp))
    row = zone_row(page, "zone-2")
    expect(row).to_contain_text("Online", timeout=WAIT)
    killed = time.monotonic()
    deployment.zones["zone-2"].stop(signal.SIGKILL)
    expect(row).to_contain_text("Offline", timeout=OFFLINE_TIMEOUT * 1000)
    print(f"zone-2 shown offline {time.monotonic() - killed:.2f} s after SIGKILL")
    expect(page.locator(".stats")).to_contain_text("1/2", timeout=WAIT)
