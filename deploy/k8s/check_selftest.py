"""`deploy/k8s/check --self-test`: proves that every rule of check.py catches
the mistake it exists for. Each case copies deploy/k8s to a temporary
directory, makes one deliberate mistake there (never in the repository), runs
the checker on the copy and expects it to fail with a line naming the
problem. A case whose edit no longer applies (the manifests changed) fails
too, so the self-test cannot pass vacuously.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Callable

import yaml


class EditError(Exception):
    pass


def text(old: str, new: str) -> Callable[[Path], None]:
    """Replace the first `old` in the file with `new`."""

    def edit(path: Path) -> None:
        content = path.read_text()
        if old not in content:
            raise EditError(f"{old!r} not in {path.name}")
        path.write_text(content.replace(old, new, 1))

    return edit


def docs(change: Callable[[list[dict]], None]) -> Callable[[Path], None]:
    """Change the file's YAML documents (comments are lost; fine in a copy)."""

    def edit(path: Path) -> None:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d]
        try:
            change(documents)
        except (KeyError, IndexError, StopIteration) as error:
            raise EditError(f"{path.name}: {error!r}") from error
        path.write_text(yaml.safe_dump_all(documents, sort_keys=False))

    return edit


def first(documents: list[dict], kind: str) -> dict:
    return next(d for d in documents if d["kind"] == kind)


def container(documents: list[dict], kind: str = "Deployment") -> dict:
    return first(documents, kind)["spec"]["template"]["spec"]["containers"][0]


def pod(documents: list[dict], kind: str = "Deployment") -> dict:
    return first(documents, kind)["spec"]["template"]["spec"]


def env_var(documents: list[dict], name: str) -> dict:
    """The first Deployment's first container's `env` entry `name`."""
    return next(e for e in container(documents)["env"] if e["name"] == name)


def secret_key(documents: list[dict], name: str) -> dict:
    return env_var(documents, name)["valueFrom"]["secretKeyRef"]


# (what the mistake is, file in deploy/k8s, edit, text the checker must print)
CASES: list[tuple[str, str, Callable[[Path], None], str]] = [
    ("kustomization names a missing file", "base/kustomization.yaml",
     text("  - migrate-job.yaml", "  - migrate-jobs.yaml"), "kubectl kustomize failed"),
    ("unknown field (strict schema)", "base/query-service.yaml",
     docs(lambda d: container(d).update(imagePullPolicyy="Always")), "'imagePullPolicyy' was unexpected"),
    ("wrong apiVersion (no schema)", "base/query-service.yaml",
     docs(lambda d: first(d, "HorizontalPodAutoscaler").update(apiVersion="autoscaling/v3")), "schema (1.30.0)"),
    ("no readiness probe", "base/query-service.yaml",
     docs(lambda d: container(d).pop("readinessProbe")), "container query-service: no readinessProbe"),
    ("no liveness probe", "base/command-service.yaml",
     docs(lambda d: container(d).pop("livenessProbe")), "container command-service: no livenessProbe"),
    ("no CPU request", "base/projector.yaml",
     docs(lambda d: container(d)["resources"]["requests"].pop("cpu")), "container projector: no cpu request"),
    ("no memory limit", "components/pgbouncer/pgbouncer.yaml",
     docs(lambda d: container(d)["resources"]["limits"].pop("memory")), "container pgbouncer: no memory limit"),
    ("runs as root", "base/command-service.yaml",
     docs(lambda d: pod(d)["securityContext"].update(runAsNonRoot=False, runAsUser=0)), "runs as uid 0"),
    ("Job without runAsNonRoot", "base/migrate-job.yaml",
     docs(lambda d: pod(d, "Job")["securityContext"].pop("runAsNonRoot")), "job/cqrs-migrate container migrate: runAsNonRoot is not true"),
    ("writable root filesystem", "base/query-service.yaml",
     docs(lambda d: container(d)["securityContext"].update(readOnlyRootFilesystem=False)), "root filesystem is writable"),
    ("capabilities kept", "base/projector.yaml",
     docs(lambda d: container(d)["securityContext"].pop("capabilities")), "does not drop ALL capabilities"),
    ("Deployment without a budget", "base/query-service.yaml",
     docs(lambda d: d.remove(first(d, "PodDisruptionBudget"))), "deployment/query-service: no PodDisruptionBudget selects its pods"),
    ("budget selecting nothing", "base/projector.yaml",
     docs(lambda d: first(d, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].update({"app.kubernetes.io/name": "projecter"})),
     "poddisruptionbudget/projector: selects no Deployment's pods"),
    ("budget that blocks drains", "base/command-service.yaml",
     docs(lambda d: first(d, "PodDisruptionBudget")["spec"].update(minAvailable=2)), "allows no eviction of deployment/command-service"),
    ("dev keeps minAvailable 1 at one replica", "overlays/dev/kustomization.yaml",
     text('name: "command-service|query-service|pgbouncer"', 'name: "query-service|pgbouncer"'),
     "overlays/dev: poddisruptionbudget/command-service: allows no eviction"),
    ("autoscaler target misspelt", "base/query-service.yaml",
     docs(lambda d: first(d, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(name="query-svc")), "scaleTargetRef names no Deployment (query-svc)"),
    ("replicas on an autoscaled Deployment", "overlays/production/kustomization.yaml",
     text("  - name: pgbouncer\n    count: 2", "  - name: pgbouncer\n    count: 2\n  - name: query-service\n    count: 4"),
     "deployment/query-service: sets replicas although"),
    ("projector cap above the partitions", "base/projector.yaml",
     docs(lambda d: first(d, "HorizontalPodAutoscaler")["spec"].update(maxReplicas=16)), "maxReplicas 16 != KAFKA_TOPIC_PARTITIONS 12"),
    ("partitions changed, cap not", "base/kafka.env",
     text("KAFKA_TOPIC_PARTITIONS=12", "KAFKA_TOPIC_PARTITIONS=24"), "maxReplicas 12 != KAFKA_TOPIC_PARTITIONS 24"),
    ("lag of another consumer group", "base/projector.env",
     text("PROJECTOR_GROUP_ID=projector", "PROJECTOR_GROUP_ID=read-models"), "PROJECTOR_GROUP_ID read-models"),
    ("HPA metric no adapter rule produces", "base/query-service.yaml",
     docs(lambda d: [m for m in first(d, "HorizontalPodAutoscaler")["spec"]["metrics"] if m["type"] == "Pods"][0]["pods"]["metric"].update(name="http_requests_rate")),
     "produces Pods metric http_requests_rate"),
    ("env name no crate reads (ConfigMap)", "base/command-service.env",
     text("PRIMARY_POOL_SIZE=16", "PRIMARY_POOL_SZE=16"), "env PRIMARY_POOL_SZE is read by none of command-service"),
    ("env name no crate reads (env)", "base/query-service.yaml",
     docs(lambda d: container(d)["env"].append({"name": "QUERY_CACHE_SIZE", "value": "100"})), "env QUERY_CACHE_SIZE is read by none of query-service"),
    ("secret key that does not exist", "base/projector.yaml",
     docs(lambda d: secret_key(d, "PRIMARY_DATABASE_URL").update(key="primary_url")), "has no key primary_url"),
    ("ConfigMap that does not exist", "base/query-service.yaml",
     docs(lambda d: container(d)["envFrom"][1]["configMapRef"].update(name="query-config")), "ConfigMap query-config does not exist"),
    ("Service selecting no pods", "base/projector.yaml",
     docs(lambda d: first(d, "Service")["spec"]["selector"].update({"app.kubernetes.io/name": "projectors"})), "service/projector: selector"),
    ("Service to a port the pods lack", "components/pgbouncer/pgbouncer.yaml",
     docs(lambda d: first(d, "Service")["spec"]["ports"][0].update(targetPort="pg")), "targetPort pg is no port of deployment/pgbouncer"),
    ("Deployment selector not matching its pods", "base/command-service.yaml",
     docs(lambda d: first(d, "Deployment")["spec"]["template"]["metadata"]["labels"].update({"app.kubernetes.io/name": "commands"})),
     "deployment/command-service: selector does not match its own pod labels"),
    ("session URL through PgBouncer", "overlays/production/secrets.env",
     text("CHANGE-ME@primary.db.example.internal:5432", "CHANGE-ME@pgbouncer:6432"), "its session URL goes through PgBouncer"),
    ("PgBouncer without the pooler flag", "base/command-service.env",
     text("PRIMARY_TRANSACTION_POOLER=true", "PRIMARY_TRANSACTION_POOLER=false"), "PRIMARY_TRANSACTION_POOLER is not true"),
    ("query-service through PgBouncer without the pooler flag", "base/query-service.env",
     text("PRIMARY_TRANSACTION_POOLER=true", "PRIMARY_TRANSACTION_POOLER=false"),
     "deployment/query-service container query-service: PRIMARY_DATABASE_URL goes through PgBouncer"),
    ("projector straight to the primary while PgBouncer is deployed", "base/projector.yaml",
     docs(lambda d: secret_key(d, "PRIMARY_DATABASE_URL").update(key="primary-url")),
     "deployment/projector container projector: PRIMARY_DATABASE_URL bypasses PgBouncer"),
    ("query-service straight to the primary while PgBouncer is deployed", "base/query-service.yaml",
     docs(lambda d: secret_key(d, "PRIMARY_DATABASE_URL").update(key="primary-url")),
     "deployment/query-service container query-service: PRIMARY_DATABASE_URL bypasses PgBouncer"),
    ("projector behind PgBouncer without a session URL", "base/projector.yaml",
     docs(lambda d: container(d)["env"].remove(env_var(d, "PRIMARY_SESSION_DATABASE_URL"))),
     "deployment/projector container projector: PRIMARY_TRANSACTION_POOLER is true but PRIMARY_SESSION_DATABASE_URL is not set"),
    ("projector's session URL through PgBouncer", "base/projector.yaml",
     docs(lambda d: secret_key(d, "PRIMARY_SESSION_DATABASE_URL").update(key="primary-pgbouncer-url")),
     "deployment/projector container projector: its session URL goes through PgBouncer"),
    ("a variable the service does not read (another one does)", "base/projector.env",
     text("PROJECTOR_POOL_SIZE=4", "PROJECTOR_POOL_SIZE=4\nRELAY_ENABLED=true"),
     "env RELAY_ENABLED is read by none of projector"),
    ("moving image tag", "overlays/production/kustomization.yaml",
     text('newTag: "0.1.0"', "newTag: latest"), "is not pinned to a tag or digest"),
]


def run(check: str, k8s_dir: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([check, str(k8s_dir)], capture_output=True, text=True, env=env)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", required=True, help="the deploy/k8s/check script")
    parser.add_argument("--k8s-dir", type=Path, required=True)
    args = parser.parse_args()

    failures = 0
    with tempfile.TemporaryDirectory(prefix="k8s-selftest-") as tmp:
        clean = run(args.check, args.k8s_dir)
        if clean.returncode != 0:
            print(f"FAIL the unmodified manifests do not pass:\n{clean.stdout}{clean.stderr}")
            return 1
        print("ok   unmodified manifests pass")

        for i, (what, relative, edit, expected) in enumerate(CASES):
            copy = Path(tmp) / f"case-{i:02d}"
            shutil.copytree(args.k8s_dir, copy)
            try:
                edit(copy / relative)
            except EditError as error:
                failures += 1
                print(f"FAIL {what}: the edit no longer applies: {error}")
                continue
            result = run(args.check, copy)
            if result.returncode == 1 and expected in result.stdout:
                line = next(l for l in result.stdout.splitlines() if expected in l)
                print(f"ok   {what}\n       {line}")
            else:
                failures += 1
                print(f"FAIL {what}: expected exit 1 and {expected!r}, got exit {result.returncode}:\n"
                      f"{result.stdout}{result.stderr}")
            shutil.rmtree(copy)

        # Without kubectl the checker says so instead of passing or crashing:
        # a PATH holding bash alone.
        bare_path = Path(tmp) / "bin"
        bare_path.mkdir()
        (bare_path / "bash").symlink_to(shutil.which("bash") or "/bin/bash")
        bare = run(args.check, args.k8s_dir, env={**os.environ, "PATH": str(bare_path)})
        if bare.returncode != 0 and "kubectl not found" in bare.stderr:
            print(f"ok   kubectl missing\n       {bare.stderr.strip()}")
        else:
            failures += 1
            print(f"FAIL kubectl missing: exit {bare.returncode}: {bare.stdout}{bare.stderr}")

    total = len(CASES) + 2
    print(f"deploy/k8s/check --self-test: {total - failures}/{total} ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
