"""Offline checks of deploy/k8s, run by deploy/k8s/check (which finds the
tools and passes their paths).

Every kustomization (the base and each overlay) is rendered with
`kubectl kustomize` and checked on its own: schema validation by
kubernetes-validate, then the project's rules below, each of which stands for
a mistake that renders and validates fine yet breaks a deployment. Problems
are printed one per line as `<target>: <problem>`; the exit status is 1 if
there is any.
"""

from __future__ import annotations

import argparse
import base64
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import yaml

# The binaries of the cqrs-skeleton image: containers running one of them get
# the env-name and database-URL rules.
OUR_BINARIES = {"command-service", "query-service", "projector"}

# Where the services read their environment: every "UPPER_CASE" string
# literal in a binary's crate, and in the workspace libraries it depends on
# (its Cargo.toml), counts as a variable that binary reads. Per binary, so a
# variable given to a service that ignores it (say, the pooler flag to one
# that never reads it) is caught too.
LIBRARY_CRATES = ["service-runtime", "traffic-control", "access-control", "event-bus"]

# prometheus-adapter rules the autoscalers' Pods and External metrics must
# come from (relative to the deploy/k8s directory).
ADAPTER_RULES = "autoscaling/prometheus-adapter.yaml"

# Kinds kubernetes-validate has no schema for, allowed anyway. Empty: an
# unknown kind here is a typo in apiVersion or kind. A fork adding custom
# resources lists them, e.g. ("monitoring.coreos.com/v1", "ServiceMonitor").
CUSTOM_KINDS: set[tuple[str, str]] = set()

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


@dataclass
class Target:
    """One rendered kustomization."""

    name: str
    docs: list[dict]
    # Overlays are what gets deployed; the base leaves e.g. the image tag
    # to them.
    deployable: bool = True
    problems: list[str] = field(default_factory=list)

    def problem(self, message: str) -> None:
        self.problems.append(f"{self.name}: {message}")

    def objects(self, kind: str) -> list[dict]:
        return [d for d in self.docs if d.get("kind") == kind]

    def find(self, kind: str, namespace: str, name: str) -> dict | None:
        for doc in self.objects(kind):
            if namespace_of(doc) == namespace and doc["metadata"].get("name") == name:
                return doc
        return None


def namespace_of(doc: dict) -> str:
    return doc.get("metadata", {}).get("namespace", "")


def ref(doc: dict) -> str:
    return f"{doc.get('kind', '?').lower()}/{doc.get('metadata', {}).get('name', '?')}"


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in POD_TEMPLATE_KINDS:
        return doc.get("spec", {}).get("template", {}).get("spec")
    return None


def pod_labels(doc: dict) -> dict:
    return doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) against labels. An
    empty selector matches nothing here: no budget or Service should."""
    if not selector:
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in expressions:
        key, op, values = e.get("key"), e.get("operator"), e.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def binary(container: dict) -> str | None:
    command = container.get("command") or []
    return command[0] if command and command[0] in OUR_BINARIES else None


# ---------------------------------------------------------------- rendering


def kustomizations(k8s_dir: Path) -> list[Path]:
    found = [k8s_dir / "base"]
    overlays = k8s_dir / "overlays"
    if overlays.is_dir():
        found += sorted(p.parent for p in overlays.glob("*/kustomization.yaml"))
    return found


def render(directory: Path) -> tuple[list[dict], str | None]:
    result = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True
    )
    if result.returncode != 0:
        return [], f"kubectl kustomize failed: {result.stderr.strip()}"
    try:
        return [d for d in yaml.safe_load_all(result.stdout) if d], None
    except yaml.YAMLError as error:
        return [], f"rendered output is not YAML: {error}"


def validate_schemas(target: Target, validator: str, version: str) -> None:
    """kubernetes-validate --strict on every document, each in a file of its
    own (its messages name the file)."""
    with tempfile.TemporaryDirectory(prefix="k8s-check-") as tmp:
        files = {}
        for i, doc in enumerate(target.docs):
            path = Path(tmp) / f"{i:03d}.yaml"
            path.write_text(yaml.safe_dump(doc))
            files[str(path)] = doc
        if not files:
            target.problem("renders no documents")
            return
        result = subprocess.run(
            [validator, "--strict", "--quiet", "-k", version, *files],
            capture_output=True,
            text=True,
        )
        reported = False
        for line in (result.stdout + result.stderr).splitlines():
            match = re.match(r"(ERROR|WARN) (\S+) (.*)", line)
            if not match:
                continue
            level, path, message = match.groups()
            doc = files.get(path, {})
            if level == "WARN":
                if (doc.get("apiVersion"), doc.get("kind")) in CUSTOM_KINDS:
                    continue
                # No schema means not validated: usually a wrong apiVersion.
            reported = True
            target.problem(f"{ref(doc)}: schema ({version}): {message}")
        if result.returncode != 0 and not reported:
            target.problem(f"kubernetes-validate failed: {(result.stdout + result.stderr).strip()}")


# ---------------------------------------------------------------- environment


@dataclass
class Env:
    """A container's environment as far as the manifests decide it:
    name -> value (None when only the cluster knows it, e.g. fieldRef)."""

    values: dict[str, str | None]


def secret_data(secret: dict) -> dict[str, str]:
    data = {}
    for key, value in (secret.get("data") or {}).items():
        data[key] = base64.b64decode(value).decode("utf-8", "replace")
    data.update(secret.get("stringData") or {})
    return data


def container_env(target: Target, owner: dict, container: dict, report: bool = True) -> Env:
    """Resolves envFrom and env like the kubelet (env wins, later sources
    win) and, if `report`, reports references to objects or keys that do not
    exist: such a pod never starts (CreateContainerConfigError)."""
    namespace = namespace_of(owner)
    where = f"{ref(owner)} container {container.get('name')}"
    values: dict[str, str | None] = {}

    def source(kind: str, name: str, optional: bool) -> dict | None:
        obj = target.find(kind, namespace, name)
        if obj is None:
            if report and not optional:
                target.problem(f"{where}: {kind} {name} does not exist")
            return None
        return secret_data(obj) if kind == "Secret" else dict(obj.get("data") or {})

    for entry in container.get("envFrom") or []:
        prefix = entry.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in entry:
                data = source(kind, entry[key]["name"], entry[key].get("optional", False))
                for name, value in (data or {}).items():
                    values[prefix + name] = value
    for entry in container.get("env") or []:
        name = entry["name"]
        if "value" in entry:
            values[name] = entry["value"]
            continue
        value_from = entry.get("valueFrom") or {}
        values[name] = None
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            if key in value_from:
                selector = value_from[key]
                optional = selector.get("optional", False)
                data = source(kind, selector["name"], optional)
                if report and data is not None and selector["key"] not in data and not optional:
                    target.problem(
                        f"{where}: env {name}: {kind} {selector['name']} has no key {selector['key']}"
                    )
                values[name] = (data or {}).get(selector["key"])
    return Env(values)


def env_names_by_binary(repo_root: Path) -> dict[str, tuple[set[str], list[str]]]:
    """binary -> (names its crates read, the crates scanned)."""
    found = {}
    for binary_name in sorted(OUR_BINARIES):
        with open(repo_root / binary_name / "Cargo.toml", "rb") as manifest:
            dependencies = tomllib.load(manifest).get("dependencies", {})
        crates = [binary_name] + [lib for lib in LIBRARY_CRATES if lib in dependencies]
        names: set[str] = set()
        for crate in crates:
            for path in (repo_root / crate / "src").rglob("*.rs"):
                names.update(re.findall(r'"([A-Z][A-Z0-9_]*)"', path.read_text()))
        found[binary_name] = (names, crates)
    return found


def session_binaries(repo_root: Path) -> set[str]:
    """The binaries that keep session state on the primary (migrations, the
    relay's lock) and so require PRIMARY_SESSION_DATABASE_URL behind a
    transaction pooler: their own crate asks service_runtime for that URL.
    query-service does not, and is not asked for one."""
    call = re.compile(r"\bsession_database_url\(")
    return {
        binary_name
        for binary_name in OUR_BINARIES
        if any(call.search(path.read_text()) for path in (repo_root / binary_name / "src").rglob("*.rs"))
    }


# ---------------------------------------------------------------- rules


def check_workloads(target: Target) -> None:
    """Probes and resources (Deployments), restricted security context (every
    pod template)."""
    for doc in target.docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        pod_security = spec.get("securityContext") or {}
        containers = (spec.get("initContainers") or []) + (spec.get("containers") or [])
        for c in containers:
            where = f"{ref(doc)} container {c.get('name')}"
            security = c.get("securityContext") or {}

            def effective(key: str):
                return security.get(key, pod_security.get(key))

            if effective("runAsNonRoot") is not True:
                target.problem(f"{where}: runAsNonRoot is not true")
            if effective("runAsUser") == 0:
                target.problem(f"{where}: runs as uid 0")
            if security.get("allowPrivilegeEscalation") is not False:
                target.problem(f"{where}: allowPrivilegeEscalation is not false")
            if "ALL" not in ((security.get("capabilities") or {}).get("drop") or []):
                target.problem(f"{where}: does not drop ALL capabilities")
            if security.get("readOnlyRootFilesystem") is not True:
                target.problem(f"{where}: root filesystem is writable")
            seccomp = (effective("seccompProfile") or {}).get("type")
            if seccomp not in ("RuntimeDefault", "Localhost"):
                target.problem(f"{where}: no RuntimeDefault seccomp profile")

        if doc["kind"] != "Deployment":
            continue
        if not selector_matches(doc["spec"].get("selector"), pod_labels(doc)):
            target.problem(f"{ref(doc)}: selector does not match its own pod labels")
        for c in spec.get("containers") or []:
            where = f"{ref(doc)} container {c.get('name')}"
            for probe in ("readinessProbe", "livenessProbe"):
                if not c.get(probe):
                    target.problem(f"{where}: no {probe}")
            resources = c.get("resources") or {}
            requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
            for name in ("cpu", "memory"):
                if name not in requests:
                    target.problem(f"{where}: no {name} request")
            # A CPU limit is a choice (see base/command-service.yaml); a
            # memory limit is not: without one a leak takes the node.
            if "memory" not in limits:
                target.problem(f"{where}: no memory limit")


def autoscalers_by_target(target: Target) -> dict[tuple[str, str], dict]:
    found = {}
    for hpa in target.objects("HorizontalPodAutoscaler"):
        scale = hpa["spec"].get("scaleTargetRef") or {}
        found[(namespace_of(hpa), scale.get("name"))] = hpa
    return found


def check_budgets(target: Target) -> None:
    """Every Deployment has a PodDisruptionBudget, and none forbids every
    voluntary eviction (which would hang node drains forever)."""
    hpas = autoscalers_by_target(target)
    budgets = target.objects("PodDisruptionBudget")
    deployments = target.objects("Deployment")
    for pdb in budgets:
        if not any(
            namespace_of(d) == namespace_of(pdb)
            and selector_matches(pdb["spec"].get("selector"), pod_labels(d))
            for d in deployments
        ):
            target.problem(f"{ref(pdb)}: selects no Deployment's pods")
    for deployment in deployments:
        mine = [
            pdb
            for pdb in budgets
            if namespace_of(pdb) == namespace_of(deployment)
            and selector_matches(pdb["spec"].get("selector"), pod_labels(deployment))
        ]
        if not mine:
            target.problem(f"{ref(deployment)}: no PodDisruptionBudget selects its pods")
        hpa = hpas.get((namespace_of(deployment), deployment["metadata"]["name"]))
        floor = (hpa["spec"].get("minReplicas", 1) if hpa else deployment["spec"].get("replicas", 1))
        for pdb in mine:
            spec = pdb["spec"]
            min_available, max_unavailable = spec.get("minAvailable"), spec.get("maxUnavailable")
            blocks = (
                (isinstance(min_available, int) and min_available >= floor)
                or min_available == "100%"
                or max_unavailable in (0, "0%")
            )
            if blocks:
                target.problem(
                    f"{ref(pdb)}: allows no eviction of {ref(deployment)} at its "
                    f"{floor} replica(s): node drains would hang"
                )


def adapter_metric_names(k8s_dir: Path) -> tuple[set[str], set[str]] | None:
    path = k8s_dir / ADAPTER_RULES
    if not path.is_file():
        return None
    for doc in yaml.safe_load_all(path.read_text()):
        if doc and doc.get("kind") == "ConfigMap":
            config = yaml.safe_load((doc.get("data") or {}).get("config.yaml") or "{}") or {}

            def names(rules: list) -> set[str]:
                found = set()
                for rule in rules or []:
                    alias = (rule.get("name") or {}).get("as")
                    if alias:
                        found.add(alias)
                    else:
                        match = re.match(r"\s*(?:\{__name__=\")?([a-zA-Z_:][a-zA-Z0-9_:]*)", rule.get("seriesQuery", ""))
                        if match:
                            found.add(match.group(1))
                return found

            return names(config.get("rules")), names(config.get("externalRules"))
    return None


def check_autoscalers(target: Target, adapter: tuple[set[str], set[str]] | None) -> None:
    for hpa in target.objects("HorizontalPodAutoscaler"):
        spec = hpa["spec"]
        scale = spec.get("scaleTargetRef") or {}
        deployment = None
        if scale.get("kind") != "Deployment" or scale.get("apiVersion") != "apps/v1":
            target.problem(f"{ref(hpa)}: scaleTargetRef is not an apps/v1 Deployment")
        else:
            deployment = target.find("Deployment", namespace_of(hpa), scale.get("name"))
            if deployment is None:
                target.problem(f"{ref(hpa)}: scaleTargetRef names no Deployment ({scale.get('name')})")
        if deployment is not None and "replicas" in deployment["spec"]:
            target.problem(
                f"{ref(deployment)}: sets replicas although {ref(hpa)} scales it "
                "(every apply would reset the autoscaler's count)"
            )
        for metric in spec.get("metrics") or []:
            kind = metric.get("type")
            if kind not in ("Pods", "Object", "External"):
                continue
            name = (metric.get(kind[0].lower() + kind[1:]) or {}).get("metric", {}).get("name")
            if adapter is None:
                target.problem(f"{ref(hpa)}: metric {name} needs prometheus-adapter rules in {ADAPTER_RULES}")
                continue
            custom, external = adapter
            if name not in (external if kind == "External" else custom):
                target.problem(f"{ref(hpa)}: no prometheus-adapter rule in {ADAPTER_RULES} produces {kind} metric {name}")
        if deployment is not None:
            check_projector_autoscaler(target, hpa, deployment)


def check_projector_autoscaler(target: Target, hpa: dict, deployment: dict) -> None:
    """The projector's autoscaler stops at the partition count, and follows
    the lag of the group the projector actually consumes as."""
    containers = deployment["spec"]["template"]["spec"].get("containers") or []
    projector = next((c for c in containers if binary(c) == "projector"), None)
    if projector is None:
        return
    env = container_env(target, deployment, projector, report=False).values
    partitions = env.get("KAFKA_TOPIC_PARTITIONS")
    if partitions is None:
        target.problem(f"{ref(deployment)}: KAFKA_TOPIC_PARTITIONS is not set, so {ref(hpa)}'s cap cannot be checked")
    elif str(hpa["spec"].get("maxReplicas")) != str(partitions).strip():
        target.problem(
            f"{ref(hpa)}: maxReplicas {hpa['spec'].get('maxReplicas')} != KAFKA_TOPIC_PARTITIONS "
            f"{partitions} (more instances would idle; fewer cap the parallelism below the partition count)"
        )
    group = env.get("PROJECTOR_GROUP_ID")
    for metric in hpa["spec"].get("metrics") or []:
        external = metric.get("external") or {}
        if external.get("metric", {}).get("name") != "kafka_consumergroup_lag":
            continue
        selected = ((external["metric"].get("selector") or {}).get("matchLabels") or {}).get("consumergroup")
        if group is None or selected != group:
            target.problem(
                f"{ref(hpa)}: follows consumergroup {selected} but the projector consumes as "
                f"PROJECTOR_GROUP_ID {group}"
            )


def pooler_services(target: Target) -> list[dict]:
    """Services in front of a PgBouncer Deployment."""
    poolers = [
        d
        for d in target.objects("Deployment")
        if any("pgbouncer" in (c.get("image") or "") for c in d["spec"]["template"]["spec"].get("containers") or [])
    ]
    return [
        s
        for s in target.objects("Service")
        if any(
            namespace_of(s) == namespace_of(d) and selector_matches({"matchLabels": s["spec"].get("selector")}, pod_labels(d))
            for d in poolers
        )
    ]


def points_at(url: str | None, service: dict) -> bool:
    if not url:
        return False
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        return False
    labels = host.split(".")
    name, namespace = service["metadata"]["name"], namespace_of(service)
    return labels[0] == name and (len(labels) == 1 or not namespace or labels[1] == namespace)


def check_containers(
    target: Target, env_names: dict[str, tuple[set[str], list[str]]], sessions: set[str]
) -> None:
    """Env names the crates read; database URLs that must or must not go
    through PgBouncer; pinned images."""
    poolers = pooler_services(target)
    for doc in target.docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
            where = f"{ref(doc)} container {c.get('name')}"
            image = c.get("image") or ""
            last = image.rsplit("/", 1)[-1]
            unpinned = "@" not in last and (":" not in last or last.endswith(":latest"))
            if target.deployable and unpinned:
                target.problem(f"{where}: image {image} is not pinned to a tag or digest")
            if binary(c) is None:
                continue
            env = container_env(target, doc, c).values
            names, crates = env_names[binary(c)]
            for name in sorted(env):
                if name not in names:
                    target.problem(f"{where}: env {name} is read by none of {', '.join(crates)}")
            migrate = (c.get("command") or [])[1:2] == ["migrate"]
            session = env.get("PRIMARY_SESSION_DATABASE_URL")
            if migrate and session is None:
                session = env.get("PRIMARY_DATABASE_URL")
            primary = None if migrate else env.get("PRIMARY_DATABASE_URL")
            pooled = str(env.get("PRIMARY_TRANSACTION_POOLER")).lower() == "true"
            # A pooler that is deployed serves every service's primary
            # connections; only sessions reach the primary directly. (A fork
            # with a managed pooler deploys none, so this cannot tell.)
            if poolers and primary and not any(points_at(primary, s) for s in poolers):
                target.problem(
                    f"{where}: PRIMARY_DATABASE_URL bypasses PgBouncer "
                    f"({', '.join(ref(s) for s in poolers)}); only session URLs may reach the primary directly"
                )
            if pooled and not migrate and binary(c) in sessions and not session:
                target.problem(
                    f"{where}: PRIMARY_TRANSACTION_POOLER is true but PRIMARY_SESSION_DATABASE_URL is not set "
                    f"({binary(c)} needs a direct session for what a transaction pooler cannot hold, such as its migrations)"
                )
            for service in poolers:
                if points_at(session, service):
                    target.problem(
                        f"{where}: its session URL goes through PgBouncer ({ref(service)}); "
                        "advisory locks and migrations need the primary directly"
                    )
                if points_at(primary, service) and not pooled:
                    target.problem(
                        f"{where}: PRIMARY_DATABASE_URL goes through PgBouncer ({ref(service)}) "
                        "but PRIMARY_TRANSACTION_POOLER is not true"
                    )


def check_services(target: Target) -> None:
    """Each Service selects some Deployment's pods, on ports they expose."""
    for service in target.objects("Service"):
        selector = service["spec"].get("selector")
        if not selector:
            continue
        backends = [
            d
            for d in target.objects("Deployment")
            if namespace_of(d) == namespace_of(service)
            and selector_matches({"matchLabels": selector}, pod_labels(d))
        ]
        if not backends:
            target.problem(f"{ref(service)}: selector {selector} matches no Deployment's pod labels")
            continue
        for port in service["spec"].get("ports") or []:
            wanted = port.get("targetPort", port.get("port"))
            for d in backends:
                exposed = [
                    p
                    for c in d["spec"]["template"]["spec"].get("containers") or []
                    for p in c.get("ports") or []
                ]
                if not any(wanted in (p.get("name"), p.get("containerPort")) for p in exposed):
                    target.problem(f"{ref(service)}: targetPort {wanted} is no port of {ref(d)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--k8s-dir", type=Path, required=True)
    parser.add_argument("--repo-root", type=Path, required=True)
    parser.add_argument("--validator", required=True)
    parser.add_argument("--k8s-version", required=True)
    args = parser.parse_args()

    try:
        env_names = env_names_by_binary(args.repo_root)
        sessions = session_binaries(args.repo_root)
    except OSError as error:
        print(f"deploy/k8s/check: cannot read the crates in {args.repo_root}: {error}", file=sys.stderr)
        return 2
    adapter = adapter_metric_names(args.k8s_dir)

    problems: list[str] = []
    checked: list[str] = []
    for directory in kustomizations(args.k8s_dir):
        name = str(directory.relative_to(args.k8s_dir))
        docs, error = render(directory)
        target = Target(name, docs, deployable=directory.parent.name == "overlays")
        if error:
            target.problem(error)
        else:
            validate_schemas(target, args.validator, args.k8s_version)
            check_workloads(target)
            check_budgets(target)
            check_autoscalers(target, adapter)
            check_containers(target, env_names, sessions)
            check_services(target)
        problems += target.problems
        checked.append(f"{name} ({len(docs)} documents)")

    adapter_file = args.k8s_dir / ADAPTER_RULES
    if adapter_file.is_file():
        target = Target(ADAPTER_RULES, [d for d in yaml.safe_load_all(adapter_file.read_text()) if d])
        validate_schemas(target, args.validator, args.k8s_version)
        problems += target.problems
        checked.append(ADAPTER_RULES)

    for line in problems:
        print(line)
    if problems:
        print(f"deploy/k8s/check: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"deploy/k8s/check: ok: {', '.join(checked)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
