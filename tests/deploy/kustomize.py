"""The Kubernetes manifests as a cluster would receive them, without a cluster: `kubectl kustomize`
renders an overlay (offline), `kubernetes-validate` checks each object against the Kubernetes API
schemas it ships. Shared by tests/deploy/test_kubernetes.py and the deploy-doc command check."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.deploy.common import DEPLOY_DOC, ROOT, missing_prerequisite

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = sorted(path.parent.name for path in (KUBERNETES / "overlays").glob("*/kustomization.yaml"))
COMPONENTS = sorted(path.parent.name for path in (KUBERNETES / "components").glob("*/kustomization.yaml"))
# The oldest Kubernetes the manifests are for (the preStop sleep action is on by default from 1.30),
# and the newest whose schemas kubernetes-validate ships: an API removed since would fail there.
MIN_KUBERNETES = "1.30.0"
KUSTOMIZE_MAJOR = 5


@functools.cache
def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        missing_prerequisite(
            "kubectl is missing: it renders the kustomize overlays (kubectl v1.32 with kustomize v5.5)"
        )
    version = json.loads(
        subprocess.run([found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60).stdout
    )
    kustomize = version.get("kustomizeVersion", "")
    major = re.match(r"v?(\d+)", kustomize)
    if not major or int(major.group(1)) < KUSTOMIZE_MAJOR:
        missing_prerequisite(
            f"{found} bundles kustomize {kustomize or '(none)'}, older than v{KUSTOMIZE_MAJOR} "
            "(Debian's kubernetes-client is): install kubectl v1.32"
        )
    return found


def render(directory: Path) -> list[dict]:
    """`kubectl kustomize DIRECTORY`, parsed: the objects an `apply -k` would send."""
    result = subprocess.run([kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [item for item in yaml.safe_load_all(result.stdout) if item]


@functools.cache
def render_overlay(name: str) -> tuple[dict, ...]:
    return tuple(render(KUBERNETES / "overlays" / name))


def validator():
    try:
        import kubernetes_validate
    except ImportError:
        missing_prerequisite(
            "kubernetes-validate is missing: it comes with the dev extra (bash scripts/install.sh --dev)"
        )
    return kubernetes_validate


def schema_problems(objects: list[dict] | tuple[dict, ...]) -> list[str]:
    """Each object against the strict schemas (unknown fields are errors) of the oldest and the
    newest Kubernetes version; an object of a kind with no schema is a problem too."""
    kv = validator()
    versions = [MIN_KUBERNETES, kv.utils.latest_version()]
    problems = []
    for item in objects:
        name = f"{item.get('kind')}/{item.get('metadata', {}).get('name')}"
        for version in versions:
            try:
                kv.validate(item, version, strict=True)
            except kv.ValidationError as error:
                path = ".".join(str(part) for part in error.path)
                problems.append(f"{name} (Kubernetes {error.version}): {path}: {error.message}")
            except kv.SchemaNotFoundError as error:
                problems.append(f"{name}: {error.message}")
    return problems


def one(objects, kind: str) -> dict:
    found = [item for item in objects if item["kind"] == kind]
    assert len(found) == 1, f"one {kind} expected, got {[item['metadata']['name'] for item in found]}"
    return found[0]


def doc_files(doc: Path = DEPLOY_DOC) -> dict[str, str]:
    """The files the deploy doc tells you to write: ```yaml blocks whose first line is a comment
    naming the path (`# deploy/kubernetes/overlays/mine/kustomization.yaml`)."""
    files = {}
    for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S):
        first = block.splitlines()[0]
        named = re.fullmatch(r"#\s*(deploy/kubernetes/\S+\.yaml)\s*", first)
        if named:
            files[named.group(1)] = block
    return files


def tree_with_doc_files(directory: Path) -> Path:
    """A copy of deploy/kubernetes under DIRECTORY with the doc's files written into it (never into
    the repository); returns the copy's repository root."""
    shutil.copytree(KUBERNETES, directory / "deploy" / "kubernetes")
    for path, text in doc_files().items():
        target = directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return directory


def render_with_components(directory: Path, overlay: str, components: list[str]) -> list[dict]:
    """OVERLAY with COMPONENTS added, as an overlay of your own adds them: rendered from a copy under
    DIRECTORY (kustomize accepts only relative paths to the bases and components)."""
    root = directory / "deploy" / "kubernetes"
    if not root.exists():
        shutil.copytree(KUBERNETES, root)
    mine = root / "overlays" / f"test-{overlay}-{'-'.join(components)}"
    mine.mkdir()
    (mine / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [f"../{overlay}"],
                "components": [f"../../components/{component}" for component in components],
            }
        )
    )
    return render(mine)


# kubectl's names for the kinds the manifests hold, short names included
KIND_NAMES = {
    "deployment": "Deployment",
    "deployments": "Deployment",
    "deploy": "Deployment",
    "service": "Service",
    "services": "Service",
    "svc": "Service",
    "hpa": "HorizontalPodAutoscaler",
    "horizontalpodautoscaler": "HorizontalPodAutoscaler",
    "pdb": "PodDisruptionBudget",
    "poddisruptionbudget": "PodDisruptionBudget",
    "configmap": "ConfigMap",
    "cm": "ConfigMap",
}


def check_doc_kubectl(words: list[str], tree: Path) -> None:
    """A deploy doc's kubectl command, checked as far as no cluster allows, against TREE (the
    repository's deploy/kubernetes with the doc's own files written in, tree_with_doc_files):
    `apply|delete|diff -k DIR` and `kustomize DIR` render DIR and validate it; `create secret generic
    NAME --from-literal=KEY=...` creates the Secret the Deployment reads; `get|describe|rollout
    status|logs|port-forward KIND/NAME` name an object of the rendered overlays (a port-forward's
    remote port is the Service's)."""
    command = " ".join(words)
    args, position = [], 1
    while position < len(words):  # the namespace flags say nothing about the manifests
        if words[position] in ("-n", "--namespace"):
            position += 2
            continue
        args.append(words[position])
        position += 1
    rendered = {name: render_overlay(name) for name in OVERLAYS}
    every = [item for objects in rendered.values() for item in objects]
    if args[0] in ("apply", "delete", "diff") and "-k" in args or args[0] == "kustomize":
        directory = args[args.index("-k") + 1] if "-k" in args else args[1]
        assert directory.startswith("deploy/kubernetes/"), f"{command}: not one of deploy/kubernetes"
        assert (tree / directory / "kustomization.yaml").is_file(), (
            f"{command}: no such overlay (nor one the doc writes)"
        )
        problems = schema_problems(render(tree / directory))
        assert problems == [], f"{command}: {problems}"
    elif args[:3] == ["create", "secret", "generic"]:
        name = args[3]
        keys = {
            re.match(r"--from-(?:literal|file)=([^=]+)", arg).group(1) for arg in args[4:] if arg.startswith("--from-")
        }
        references = {
            (entry["valueFrom"]["secretKeyRef"]["name"], entry["valueFrom"]["secretKeyRef"]["key"])
            for item in every
            if item["kind"] == "Deployment"
            for container in item["spec"]["template"]["spec"]["containers"]
            for entry in container.get("env", [])
            if "secretKeyRef" in entry.get("valueFrom", {})
        }
        assert references and references <= {(name, key) for key in keys}, (
            f"{command}: the Deployments read the Secret keys {sorted(references)}"
        )
    elif args[0] in ("get", "describe", "logs", "port-forward") or args[:2] == ["rollout", "status"]:
        targets = args[2:] if args[0] == "rollout" else args[1:]
        kind, _, name = targets[0].partition("/")
        if not name:
            name = targets[1]
        assert kind.lower() in KIND_NAMES, f"{command}: a kind the manifests do not hold"
        [item] = [
            item
            for item in rendered[OVERLAYS[0]]
            if item["kind"] == KIND_NAMES[kind.lower()] and item["metadata"]["name"] == name
        ] or [None]
        assert item, f"{command}: no {KIND_NAMES[kind.lower()]} named {name}"
        if args[0] == "port-forward":
            remote = int(targets[-1].split(":")[-1])
            assert remote in [port["port"] for port in item["spec"]["ports"]], f"{command}: not a port of {name}"
    else:
        raise AssertionError(f"a kubectl command this check does not understand: {command}")
