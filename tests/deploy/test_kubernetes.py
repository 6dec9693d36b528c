"""The Kubernetes deployment (deploy/kubernetes), checked without a cluster (none on the development
or CI machines).

What runs here: every overlay, and each component added to one, rendered by `kubectl kustomize` as
`kubectl apply -k` would send it, then validated against the Kubernetes API schemas (strict, the
oldest and newest supported versions) that kubernetes-validate ships; and the rendered objects
checked against the app and the image: the command and user of the Dockerfile, its port, the app's
settings (ConfigMap keys) and routes (probes answered by the real app, with and without an API key),
the server's drain time against the termination grace period, the metric the autoscaler's
queue-depth option reads. What a cluster would add (scheduling, the GPU device plugin, a Prometheus
adapter really serving the metric, a read-only root filesystem at run time) is not tested here.
"""

from __future__ import annotations

import os
import re

import pytest
import yaml

from tests.deploy import dockerfile
from tests.deploy.common import IMAGE_PORT, IMAGE_SETTINGS, app_setting_names, require_app, service_on
from tests.deploy.kustomize import (
    COMPONENTS,
    KUBERNETES,
    OVERLAYS,
    one,
    render_overlay,
    render_with_components,
    schema_problems,
    validator,
)

# Settings a deployment leaves out of the ConfigMap, and why.
NOT_IN_CONFIGMAP = {
    **dict.fromkeys(IMAGE_SETTINGS, "the image fixes it (0.0.0.0:8000); the Service maps ports"),
    "CLIP_API_KEY": "a secret: it comes from the Secret you create",
    "CLIP_CHECKPOINT": "the image's bundled checkpoint, unless components/checkpoint-volume sets it",
}
# In the ConfigMap before the app reads them: settings other branches are adding. Once the app reads
# one, the test says so, and its line here goes.
AWAITED_SETTINGS: dict[str, str] = {}  # settings a ConfigMap may carry ahead of the app reading them
# The server's drain after SIGTERM where CLIP_DRAIN_SECONDS is not set (app/cli.py:
# timeout_graceful_shutdown=30), and the least time left between the drain's end and SIGKILL.
DEFAULT_DRAIN_SECONDS = 30
GRACE_MARGIN_SECONDS = 5
SETTINGS_FILE = KUBERNETES / "base" / "settings.env"
DEVICES = {"gpu": "cuda", "cpu": "cpu"}


def test_the_gpu_and_cpu_overlays_exist():
    assert {"gpu", "cpu"} <= set(OVERLAYS), OVERLAYS
    assert {"queue-depth", "checkpoint-volume"} <= set(COMPONENTS), COMPONENTS


def deployment(objects) -> dict:
    return one(objects, "Deployment")


def container(objects) -> dict:
    [found] = deployment(objects)["spec"]["template"]["spec"]["containers"]
    return found


def settings_of(objects) -> dict[str, str]:
    """The ConfigMap the container takes its environment from."""
    [source] = container(objects)["envFrom"]
    name = source["configMapRef"]["name"]
    [configmap] = [item for item in objects if item["kind"] == "ConfigMap" and item["metadata"]["name"] == name]
    return configmap.get("data", {})


def env_entries(objects) -> dict[str, dict]:
    return {entry["name"]: entry for entry in container(objects).get("env", [])}


def image_user() -> tuple[int, int]:
    user = [i.arguments for i in dockerfile.runtime_stage() if i.keyword == "USER"][-1]
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def seconds(duration: str) -> int:
    """A Docker duration as the HEALTHCHECK options write them: 120s, 2m, 1m30s."""
    parts = re.findall(r"(\d+)([hms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


# --- every overlay renders and validates ---------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_the_kubernetes_schemas(overlay):
    objects = render_overlay(overlay)
    assert schema_problems(objects) == []
    kinds = sorted(item["kind"] for item in objects)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"])
    assert "Secret" not in kinds, "the API key's Secret is yours to create, never committed"


@pytest.mark.parametrize("component", COMPONENTS)
def test_each_component_added_to_an_overlay_renders_and_validates(component, tmp_path):
    assert schema_problems(render_with_components(tmp_path, "gpu", [component])) == []


def test_all_components_together_render_and_validate(tmp_path):
    assert schema_problems(render_with_components(tmp_path, "cpu", COMPONENTS)) == []


def test_the_validation_really_checks():
    """The schemas reject a misspelt field and the preStop sleep on a Kubernetes older than 1.30."""
    objects = [dict(item) for item in render_overlay("cpu")]
    broken = yaml.safe_load(yaml.safe_dump(deployment(objects)).replace("readinessProbe", "readinesProbe"))
    assert any("readinesProbe" in problem for problem in schema_problems([broken]))
    kv = validator()
    with pytest.raises(kv.ValidationError, match="sleep"):
        kv.validate(deployment(objects), "1.28.0", strict=True)


# --- the Deployment agrees with the image --------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_container_runs_the_images_command_as_its_non_root_user_on_a_read_only_root(overlay):
    objects = render_overlay(overlay)
    pod = deployment(objects)["spec"]["template"]["spec"]
    main = container(objects)
    assert main.get("command", dockerfile.cmd(dockerfile.runtime_stage())) == dockerfile.cmd(dockerfile.runtime_stage())
    assert "args" not in main, "clip-serve takes its settings from the environment, not arguments"
    uid, gid = image_user()
    security = {**pod.get("securityContext", {}), **main.get("securityContext", {})}
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (uid, gid), "the image's USER (Dockerfile)"
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    writable = {m["mountPath"]: volumes[m["name"]] for m in main["volumeMounts"] if not m.get("readOnly")}
    assert list(writable) == ["/tmp"] and "emptyDir" in writable["/tmp"], (
        f"an emptyDir at /tmp is the only writable place (uploads over 1 MB spool there): {writable}"
    )
    assert "TMPDIR" not in env_entries(objects), "Python's temporary files must stay in /tmp"
    home = env_entries(objects)["HOME"]["value"]
    assert home == "/tmp" or home.startswith("/tmp/"), "caches under ~ (~/.cache, ~/.triton) need a writable HOME"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_selectors_and_targets_agree_with_the_image(overlay):
    objects = render_overlay(overlay)
    [port] = container(objects)["ports"]
    exposed = [i.arguments for i in dockerfile.runtime_stage() if i.keyword == "EXPOSE"]
    assert [str(port["containerPort"])] == exposed == [IMAGE_PORT]
    assert dockerfile.env(dockerfile.runtime_stage())["CLIP_PORT"] == IMAGE_PORT

    def resolves(reference) -> bool:
        return reference in (port["name"], port["containerPort"])

    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container(objects):
            assert resolves(container(objects)[probe]["httpGet"]["port"]), f"{probe} probes another port"
    service = one(objects, "Service")
    assert [p["targetPort"] for p in service["spec"]["ports"] if not resolves(p["targetPort"])] == []
    labels = deployment(objects)["spec"]["template"]["metadata"]["labels"]
    for kind, selector in [
        ("Service", service["spec"]["selector"]),
        ("PodDisruptionBudget", one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]),
        ("Deployment", deployment(objects)["spec"]["selector"]["matchLabels"]),
    ]:
        assert selector and selector.items() <= labels.items(), f"the {kind}'s selector misses the pods: {selector}"
    target = one(objects, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment(objects)["metadata"]["name"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_are_routes_the_app_answers_as_probes_need(overlay, tiny_checkpoint):
    """Readiness (and startup) say 'not yet' while the model loads, liveness says 'alive' at once;
    neither needs the API key. Asked of the real app, with a key set, before its model loads."""
    main = container(render_overlay(overlay))
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    require_app()
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    client = TestClient(create_app(Settings(checkpoint=tiny_checkpoint, api_key="a-key")))  # no lifespan: loading
    for probe, status in [("readinessProbe", 503), ("startupProbe", 503), ("livenessProbe", 200)]:
        if probe in main:
            path = main[probe]["httpGet"]["path"]
            answer = client.get(path)
            assert answer.status_code == status, f"{probe} {path} answers {answer.status_code} while the model loads"
    startup = main.get("startupProbe")
    if startup:
        window = startup["periodSeconds"] * startup["failureThreshold"]
        options = [i.arguments for i in dockerfile.runtime_stage() if i.keyword == "HEALTHCHECK"][-1]
        start_period = seconds(re.search(r"--start-period=(\S+)", options).group(1))
        assert window >= start_period, (
            f"the startup probe allows {window} s to load, the image's check {start_period} s"
        )


# --- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_holds_every_setting_the_app_reads_and_nothing_else(overlay):
    keys = set(settings_of(render_overlay(overlay)))
    settings = app_setting_names()
    missing = settings - set(NOT_IN_CONFIGMAP) - keys
    assert not missing, (
        f"settings the app reads that the ConfigMap ({SETTINGS_FILE.relative_to(KUBERNETES.parents[1])}) lacks: {sorted(missing)}"
    )
    unknown = keys - settings - set(AWAITED_SETTINGS)
    assert not unknown, f"ConfigMap keys the app does not read: {sorted(unknown)}"
    placed = keys & set(NOT_IN_CONFIGMAP)
    assert not placed, f"{sorted(placed)} do not belong in the base ConfigMap: " + "; ".join(
        NOT_IN_CONFIGMAP[name] for name in sorted(placed)
    )
    arrived = settings & set(AWAITED_SETTINGS)
    assert not arrived, f"the app reads {sorted(arrived)} now: remove them from AWAITED_SETTINGS in {__file__}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_values_are_valid_settings_and_the_device_is_the_overlays(overlay, monkeypatch):
    require_app()
    from app.settings import Settings

    data = settings_of(render_overlay(overlay))
    for name in [name for name in list(os.environ) if name.startswith("CLIP_")]:
        monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    settings = Settings()  # raises, naming the variable, on a value the app would refuse at start-up
    assert settings.device == DEVICES[overlay]
    assert data["CLIP_DEVICE"] == service_on(DEVICES[overlay])["environment"]["CLIP_DEVICE"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_api_key_comes_from_a_secret_never_a_committed_value(overlay):
    entry = env_entries(render_overlay(overlay))["CLIP_API_KEY"]
    assert "value" not in entry
    reference = entry["valueFrom"]["secretKeyRef"]
    assert reference["name"] and reference["key"]
    assert not reference.get("optional"), "without its Secret the pod must not start with an open API"


# --- shutdown ------------------------------------------------------------------------------------


def prestop_seconds(main: dict) -> int:
    prestop = main.get("lifecycle", {}).get("preStop")
    if not prestop:
        return 0
    assert "sleep" in prestop, f"a preStop this test cannot time: {prestop}"
    return int(prestop["sleep"]["seconds"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_termination_grace_covers_the_prestop_sleep_the_drain_and_a_margin(overlay, tiny_checkpoint, monkeypatch):
    objects = render_overlay(overlay)
    data = settings_of(objects)
    drain = int(data.get("CLIP_DRAIN_SECONDS", DEFAULT_DRAIN_SECONDS))
    grace = deployment(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    prestop = prestop_seconds(container(objects))
    assert prestop > 0, "a preStop sleep lets the endpoints drop the pod before the server stops accepting"
    assert grace >= prestop + drain + GRACE_MARGIN_SECONDS, (
        f"terminationGracePeriodSeconds {grace} < preStop {prestop} + drain {drain} + margin {GRACE_MARGIN_SECONDS}"
    )
    # The server itself, started with this ConfigMap's settings, drains no longer than assumed above.
    require_app()
    import uvicorn

    import app.cli

    for name in [name for name in list(os.environ) if name.startswith("CLIP_")]:
        monkeypatch.delenv(name)
    for name, value in data.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CLIP_CHECKPOINT", str(tiny_checkpoint))
    monkeypatch.setenv("CLIP_DEVICE", "cpu")  # the drain does not depend on it; this machine has no GPU
    started = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.update(options))
    app.cli.serve([])
    assert 0 < started["timeout_graceful_shutdown"] <= drain, (
        f"the server drains for {started['timeout_graceful_shutdown']} s, the manifests assume {drain} s"
    )


# --- resources and devices -----------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_resources_and_image_match_the_overlays_device(overlay):
    objects = render_overlay(overlay)
    main = container(objects)
    resources = main["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]), "the CPU autoscaler needs a CPU request"
    assert "memory" in resources["limits"]
    gpus = resources["limits"].get("nvidia.com/gpu")
    device = settings_of(objects)["CLIP_DEVICE"]
    if overlay == "gpu":
        assert (device, str(gpus)) == ("cuda", "1")
    else:
        assert (device, gpus) == ("cpu", None)
        assert "nvidia.com" not in yaml.safe_dump(list(objects)), "no GPU toleration or request on the CPU overlay"
        threads = env_entries(objects)["OMP_NUM_THREADS"]["valueFrom"]["resourceFieldRef"]
        assert threads["resource"] == "limits.cpu" and "cpu" in resources["limits"]
    assert main["image"] == service_on(device)["image"], "the same image compose builds for this device"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_and_disruption_budget_leave_a_replica_serving(overlay):
    objects = render_overlay(overlay)
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    budget = one(objects, "PodDisruptionBudget")["spec"]
    assert hpa["minReplicas"] >= 2, "one replica cannot be drained without an outage"
    assert [m["resource"]["name"] for m in hpa["metrics"] if m["type"] == "Resource"] == ["cpu"]
    if "maxUnavailable" in budget:
        assert 1 <= int(budget["maxUnavailable"]) < hpa["minReplicas"]
    else:
        assert int(budget["minAvailable"]) < hpa["minReplicas"], "a budget no drain can ever satisfy"


# --- components ----------------------------------------------------------------------------------


def test_queue_depth_component_scales_on_a_gauge_the_app_exports_through_the_adapters_rule(tmp_path):
    objects = render_with_components(tmp_path, "gpu", ["queue-depth"])
    [metric] = one(objects, "HorizontalPodAutoscaler")["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    name = metric["pods"]["metric"]["name"]
    require_app()
    from app.metrics import REGISTRY

    gauges = {family.name for family in REGISTRY.collect() if family.type == "gauge"}
    assert name in gauges, f"the HPA reads {name}; the app's /metrics has the gauges {sorted(gauges)}"
    rules = yaml.safe_load((KUBERNETES / "components" / "queue-depth" / "prometheus-adapter-rules.yaml").read_text())
    served = {rule["name"]["as"]: rule["seriesQuery"] for rule in rules["rules"]["custom"]}
    assert name in served and served[name].startswith(f"{name}{{"), f"the adapter serves {served}"
    annotations = deployment(objects)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == IMAGE_PORT
    assert annotations["prometheus.io/path"] == "/metrics"


def test_checkpoint_volume_component_points_the_checkpoint_into_a_read_only_claim(tmp_path):
    assert "CLIP_CHECKPOINT" not in settings_of(render_overlay("gpu")), "by default the image's bundled checkpoint"
    objects = render_with_components(tmp_path, "gpu", ["checkpoint-volume"])
    checkpoint = settings_of(objects)["CLIP_CHECKPOINT"]
    pod = deployment(objects)["spec"]["template"]["spec"]
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = [m for m in container(objects)["volumeMounts"] if checkpoint.startswith(m["mountPath"].rstrip("/") + "/")]
    assert len(mounts) == 1, f"CLIP_CHECKPOINT={checkpoint} is not inside one mounted volume"
    [mount] = mounts
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
    assert pod["securityContext"]["fsGroup"] == image_user()[1], "the image's group can read the volume"
